"""The event recorder: one thread that listens to the cluster's events and keeps them.

Worker events feed an in-memory :class:`~celeriac.events.State` (who is online, heartbeats);
task events are written to the history store, one transaction per batch received, with the
arguments of masked tasks replaced by ``***`` before they are stored. Once a minute tasks
older than the retention are pruned. A failure to receive (the broker went away) is logged
and the subscription opened again after a pause: the dashboard outlives broker outages.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from celeriac.dashboard.history import Event, HistoryStore
from celeriac.events import EventReceiver, State

if TYPE_CHECKING:
    from celeriac.app import Celeriac
    from celeriac.dashboard.config import DashboardConfig

logger = logging.getLogger("celeriac.dashboard")

MASK = "***"
#: s between two prunes of the history
PRUNE_EVERY = 60.0
#: s before subscribing again after the subscription failed
RETRY_AFTER = 2.0


def mask(event: Event, config: DashboardConfig) -> Event:
    """The event with its arguments hidden when its task is masked."""
    if config.masks(event.get("name")):
        for key in ("args", "kwargs"):
            if key in event:
                event[key] = MASK
    return event


class Recorder:
    """Records events into ``history`` and ``state`` on a thread of its own (module doc)."""

    def __init__(
        self,
        app: Celeriac,
        history: HistoryStore,
        config: DashboardConfig,
        on_queue: Callable[[str], object] | None = None,
        on_events: Callable[[list[Event]], object] | None = None,
    ) -> None:
        self.app = app
        #: called with every batch of events as it is recorded (the dashboard's metrics)
        self.on_events = on_events
        #: called with each queue a ``task-sent`` event names (the queues page shows them)
        self.on_queue = on_queue
        self.history = history
        self.config = config
        self.state = State(max_tasks=0)  # tasks live in the history, not here
        self.lock = threading.Lock()  # the state, read by pages
        #: task events recorded so far
        self.recorded = 0
        self._stop = threading.Event()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, name="celeriac-recorder", daemon=True)
        self._last_prune = 0.0

    def start(self, wait: float = 10.0) -> None:
        """Start recording; returns once subscribed (events from then on are seen)."""
        self._thread.start()
        self._ready.wait(wait)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5.0)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                receiver = EventReceiver(self.app, {"*": lambda e: None})
            except Exception as exc:
                logger.warning("cannot subscribe to events, trying again: %s", exc)
                self._stop.wait(RETRY_AFTER)
                continue
            self._ready.set()
            try:
                self._listen(receiver)
            except Exception as exc:
                logger.warning("receiving events failed, subscribing again: %s", exc)
                self._stop.wait(RETRY_AFTER)
            finally:
                try:
                    receiver.close()
                except Exception as exc:
                    logger.debug("closing the event receiver: %s", exc)

    def _listen(self, receiver: EventReceiver) -> None:
        while not self._stop.is_set():
            batch = receiver.subscription.receive(0.5)
            for event in batch:
                receiver.process(event)  # local times, as every receiver stamps them
            if batch:
                self.apply(batch)
            self._maybe_prune()

    def apply(self, batch: list[Event]) -> None:
        """Record a batch of events (also used by tests and imports)."""
        with self.lock:
            for event in batch:
                if str(event.get("type", "")).startswith("worker-"):
                    self.state.event(event)
        tasks = [mask(e, self.config) for e in batch if str(e.get("type", "")).startswith("task-")]
        if self.on_queue is not None:
            for e in tasks:
                if e.get("queue"):
                    self.on_queue(str(e["queue"]))
        if tasks:
            self.recorded += self.history.record(tasks)
        if self.on_events is not None:
            self.on_events(batch)

    def _maybe_prune(self) -> None:
        now = time.time()
        if not self.config.retention or now - self._last_prune < PRUNE_EVERY:
            return
        self._last_prune = now
        try:
            pruned = self.history.prune(now - self.config.retention)
        except Exception as exc:
            logger.warning("pruning the history failed: %s", exc)
            return
        if pruned:
            logger.info("pruned %d task(s) older than the retention", pruned)
