"""Sending events: Celery's common fields on each, task events batched so they cost little.

Every event gets ``hostname``, ``utcoffset`` (hours, west positive, as Python's
``time.timezone``), ``pid``, ``clock`` (a Lamport clock, forwarded per event), ``timestamp``
and ``type``. Events of a buffered group (``task``) wait in a buffer that is sent as one
``task.multi`` message once it holds :data:`BUFFER_LIMIT` events or, at the latest,
:data:`FLUSH_EVERY` seconds after its first event (a small flusher thread); others (``worker-*``)
go at once. A failed send is logged and its events dropped: events are best effort, and a
worker must never slow down or fail a task for them.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from typing import TYPE_CHECKING, Any

from celeriac.events.channel import Event, group_of

if TYPE_CHECKING:
    from celeriac.events.channel import EventChannel

logger = logging.getLogger("celeriac.events")

#: Celery's ``buffer_limit``: events a ``task.multi`` message carries at most.
BUFFER_LIMIT = 24
#: s a buffered event waits at most before it is sent.
FLUSH_EVERY = 0.1
#: s between two log lines about failing sends.
_WARN_EVERY = 30.0


def utcoffset() -> float:
    """This machine's offset to UTC in hours, west positive (Celery's ``utcoffset``)."""
    return (time.altzone if time.localtime().tm_isdst else time.timezone) / 3600


class LamportClock:
    """Lamport's logical clock, as Celery's events carry it."""

    def __init__(self, value: int = 0) -> None:
        self.value = value
        self._lock = threading.Lock()

    def forward(self) -> int:
        with self._lock:
            self.value += 1
            return self.value

    def adjust(self, other: int) -> int:
        with self._lock:
            self.value = max(self.value, other) + 1
            return self.value


class EventDispatcher:
    """Sends events for node ``hostname`` on ``channel`` (module docstring)."""

    def __init__(
        self,
        channel: EventChannel,
        hostname: str,
        *,
        buffer_groups: tuple[str, ...] = ("task",),
        buffer_limit: int = BUFFER_LIMIT,
        flush_every: float = FLUSH_EVERY,
    ) -> None:
        self.channel = channel
        self.hostname = hostname
        self.pid = os.getpid()
        self.clock = LamportClock()
        self.buffer_groups = buffer_groups
        self.buffer_limit = max(1, buffer_limit)
        self.flush_every = flush_every
        self._buffer: list[Event] = []
        self._lock = threading.Lock()  # the buffer
        self._send_lock = threading.Lock()  # one send at a time keeps each node's order
        self._due = threading.Event()
        self._closed = threading.Event()
        self._flusher: threading.Thread | None = None
        self._warned = 0.0
        #: events sent and dropped so far (tests and stats read them)
        self.sent = 0
        self.dropped = 0

    def event(self, type: str, **fields: Any) -> Event:
        """An event of ``type`` with this node's common fields."""
        fields.update(
            hostname=self.hostname,
            utcoffset=utcoffset(),
            pid=self.pid,
            clock=self.clock.forward(),
            timestamp=time.time(),
            type=type,
        )
        return fields

    def send(self, type: str, **fields: Any) -> None:
        """Send an event now, or buffer it when its group is buffered."""
        event = self.event(type, **fields)
        if group_of(type) not in self.buffer_groups:
            self._publish([event], grouped=False)
            return
        with self._lock:
            self._buffer.append(event)
            full = len(self._buffer) >= self.buffer_limit
            batch = self._take() if full else None
        if batch:
            self._publish(batch)
        elif not self._due.is_set():
            self._start_flusher()
            self._due.set()

    def _take(self) -> list[Event]:
        batch, self._buffer = self._buffer, []
        return batch

    def flush(self) -> None:
        """Send what waits in the buffer."""
        with self._lock:
            batch = self._take()
        if batch:
            self._publish(batch)

    def publish(self, events: list[Event]) -> None:
        """Send events made by :meth:`event` at once: one of them under its own routing key,
        several as one batch."""
        if events:
            self._publish(events, grouped=len(events) > 1)

    def _publish(self, batch: list[Event], grouped: bool = True) -> None:
        try:
            with self._send_lock:
                self.channel.publish(batch, grouped=grouped)
            self.sent += len(batch)
        except Exception as exc:
            self.dropped += len(batch)
            now = time.monotonic()
            if now - self._warned >= _WARN_EVERY:
                self._warned = now
                logger.warning("could not send %d event(s), dropped: %s", len(batch), exc)

    def _start_flusher(self) -> None:
        if self._flusher is None:
            with self._lock:
                if self._flusher is None:
                    self._flusher = threading.Thread(
                        target=self._flush_loop, name="celeriac-events", daemon=True
                    )
                    self._flusher.start()

    def _flush_loop(self) -> None:
        while not self._closed.is_set():
            self._due.wait()
            # Let the batch fill for a moment: one message for everything of these 100 ms.
            self._closed.wait(self.flush_every)
            self._due.clear()
            self.flush()

    def close(self) -> None:
        """Send what is buffered and close the channel."""
        self._closed.set()
        self._due.set()
        if self._flusher is not None:
            self._flusher.join(2.0)
        self.flush()
        self.channel.close()
