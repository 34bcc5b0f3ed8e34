"""Receiving events: Celery's ``EventReceiver`` shape, a handler per event type.

>>> def done(event):
...     print(event["uuid"], event["result"])
>>> with EventReceiver(app, handlers={"task-succeeded": done, "*": state.event}) as recv:
...     recv.capture(limit=10, timeout=5.0)

A handler is looked up by the event's ``type``, else under ``"*"``; events without one are
dropped. Each event gets ``local_received`` (this machine's time when it arrived) and its
``timestamp`` moved to this machine's time zone as Celery does (by the sender's ``utcoffset``).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import TYPE_CHECKING

from celeriac.events.channel import Event, EventChannel, Subscription
from celeriac.events.dispatcher import LamportClock, utcoffset

if TYPE_CHECKING:
    from celeriac.app import Celeriac

Handler = Callable[[Event], object]


class EventReceiver:
    """Subscribes on the app's broker (or a given channel) and hands events to handlers."""

    def __init__(
        self,
        app_or_channel: Celeriac | EventChannel,
        handlers: Mapping[str, Handler] | None = None,
        routing_key: str | Sequence[str] = "#",
    ) -> None:
        if isinstance(app_or_channel, EventChannel):
            self.channel, self._owned = app_or_channel, False
        else:
            self.channel, self._owned = app_or_channel.connections.event_channel(), True
        self.handlers = dict(handlers or {})
        patterns = [routing_key] if isinstance(routing_key, str) else list(routing_key)
        self.clock = LamportClock()
        #: set by a handler (or another thread) to end :meth:`capture`
        self.should_stop = False
        # Subscribed now: what is published from here on is seen, as with Celery's queue.
        self.subscription: Subscription = self.channel.subscribe(patterns)

    def process(self, event: Event) -> None:
        """Stamp ``event`` and hand it to its handler."""
        event["local_received"] = time.time()
        ts, offset = event.get("timestamp"), event.get("utcoffset")
        if isinstance(ts, int | float) and isinstance(offset, int | float):
            event["timestamp"] = ts - (offset - utcoffset()) * 3600
        clock = event.get("clock")
        if isinstance(clock, int):
            self.clock.adjust(clock)
        handler = self.handlers.get(str(event.get("type"))) or self.handlers.get("*")
        if handler is not None:
            handler(event)

    def itercapture(
        self, limit: int | None = None, timeout: float | None = None, poll: float = 0.5
    ) -> Iterator[Event]:
        """Events as they come, each processed first; ends after ``limit`` events,
        ``timeout`` seconds, or once :attr:`should_stop` is set."""
        deadline = None if timeout is None else time.monotonic() + timeout
        seen = 0
        while not self.should_stop:
            wait = poll
            if deadline is not None:
                wait = min(poll, deadline - time.monotonic())
                if wait <= 0:
                    return
            for event in self.subscription.receive(wait):
                self.process(event)
                seen += 1
                yield event
                if (limit is not None and seen >= limit) or self.should_stop:
                    return

    def capture(
        self, limit: int | None = None, timeout: float | None = None, poll: float = 0.5
    ) -> int:
        """Process events until ``limit``, ``timeout`` or :attr:`should_stop`; how many."""
        return sum(1 for _ in self.itercapture(limit, timeout, poll))

    def close(self) -> None:
        self.subscription.close()
        if self._owned:
            self.channel.close()

    def __enter__(self) -> EventReceiver:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
