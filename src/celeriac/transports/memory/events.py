"""Events within one process: every channel of one memory transport shares a hub."""

from __future__ import annotations

import json
import threading
from collections import deque
from collections.abc import Sequence

from celeriac.events.channel import Event, EventChannel, Subscription, unpack, wire_form


class Hub:
    """The subscriptions of one memory transport."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.subscriptions: list[MemorySubscription] = []


class MemorySubscription(Subscription):
    def __init__(self, hub: Hub, patterns: Sequence[str]) -> None:
        super().__init__(patterns)
        self._hub = hub
        self._events: deque[Event] = deque()
        self._cond = threading.Condition()

    def deliver(self, key: str, body: str) -> None:
        if self.wanted(key):
            with self._cond:
                self._events.extend(unpack(json.loads(body)))
                self._cond.notify_all()

    def receive(self, timeout: float) -> list[Event]:
        with self._cond:
            if not self._events:
                self._cond.wait(max(0.0, timeout))
            out = list(self._events)
            self._events.clear()
        return out

    def close(self) -> None:
        with self._hub.lock:
            if self in self._hub.subscriptions:
                self._hub.subscriptions.remove(self)


class MemoryEventChannel(EventChannel):
    def __init__(self, hub: Hub) -> None:
        super().__init__()
        self._hub = hub

    def publish(self, events: Sequence[Event], *, grouped: bool = False) -> None:
        key, body = wire_form(events, grouped)
        text = json.dumps(body)  # as on a wire: what cannot be serialised fails here too
        with self._hub.lock:
            subscriptions = list(self._hub.subscriptions)
        for sub in subscriptions:
            sub.deliver(key, text)

    def subscribe(self, patterns: Sequence[str] = ("#",)) -> Subscription:
        sub = MemorySubscription(self._hub, patterns)
        with self._hub.lock:
            self._hub.subscriptions.append(sub)
        return sub
