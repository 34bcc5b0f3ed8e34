"""Settings remote control changes at run time, carried from a prefork supervisor to its children.

A prefork worker whose children consume hears remote control in its supervising process, but
the settings it changes act in the children: their fetchers apply rate limits and read their
queue list, their pools arm time limits. So the supervisor keeps every change made so far as one
small value (:class:`Overrides`) and publishes it whole into shared memory
(:class:`SharedOverrides`) with a version number. Each child applies it before it consumes and
again whenever the version moves (:class:`Follower`, a thread that looks every
:data:`POLL` s). Publishing the state, not the commands, means a child started later (a
replacement, or one added by ``pool_grow``) gets everything, and nothing is lost when changes
come faster than a child looks.

Each child writes back the version it applied, so the supervisor replies to a command once every
running child applied it (:meth:`SharedOverrides.wait_applied`, bounded).

One writer (the supervisor, under its lock), many readers, no lock across processes: a
sequence number made odd while writing (a seqlock) tells a reader to look again.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

from celeriac.exceptions import CeleriacError, Unsupported
from celeriac.worker.shared import SharedBytes, SharedInts

if TYPE_CHECKING:
    from celeriac.worker.worker import Worker

logger = logging.getLogger("celeriac.worker")

#: Bytes for the published overrides (JSON): room for a few hundred changes.
SIZE = 65536
#: s between two looks of a child at the version
POLL = 0.05


@dataclass(frozen=True)
class Overrides:
    """Every run-time change so far: per task name its rate limit and its (soft, hard) time
    limits, the queues to consume and the number of children (a child's share of a rate)."""

    queues: tuple[str, ...]
    size: int
    rate_limits: dict[str, str | float | None] = field(default_factory=dict)
    time_limits: dict[str, tuple[float | None, float | None]] = field(default_factory=dict)

    def with_rate(self, task_name: str, rate: str | float | None) -> Overrides:
        return replace(self, rate_limits={**self.rate_limits, task_name: rate})

    def with_time_limits(self, task_name: str, soft: float | None, hard: float | None) -> Overrides:
        return replace(self, time_limits={**self.time_limits, task_name: (soft, hard)})

    def encode(self) -> bytes:
        return json.dumps(
            {
                "queues": list(self.queues),
                "size": self.size,
                "rate_limits": self.rate_limits,
                "time_limits": {k: list(v) for k, v in self.time_limits.items()},
            }
        ).encode()

    @classmethod
    def decode(cls, data: bytes) -> Overrides:
        raw: dict[str, Any] = json.loads(data)
        return cls(
            queues=tuple(raw["queues"]),
            size=int(raw["size"]),
            rate_limits=dict(raw["rate_limits"]),
            time_limits={k: (v[0], v[1]) for k, v in raw["time_limits"].items()},
        )


def apply(worker: Worker, overrides: Overrides) -> None:
    """Make ``worker`` (a prefork child, or the supervisor itself) follow ``overrides``.

    Attributes are rebound, never mutated in place: the fetcher thread reads them between two
    fetches and must see either the old value or the new one.
    """
    tasks = worker.app.tasks
    for name, rate in overrides.rate_limits.items():
        task = tasks.get(name)
        if task is not None:
            task.rate_limit = str(rate) if rate else None
    for name, (soft, hard) in overrides.time_limits.items():
        task = tasks.get(name)
        if task is not None:
            task.soft_time_limit, task.time_limit = soft, hard
    queues = list(overrides.queues)
    share = 1.0 / max(1, overrides.size)
    consumer = worker.consumer
    worker.queues = consumer.queues = queues
    consumer.rate_share = share
    fetcher = consumer.fetcher
    if fetcher is not None:
        fetcher.queues = queues
        fetcher.rate_share = share
        fetcher.forget_rate(None)  # a changed limit or share starts a new schedule


def stop_consuming(worker: Worker, queues: list[str]) -> None:
    """Tell the broker ``worker`` no longer fetches ``queues`` (RabbitMQ: cancel the consumers,
    give back what they received)."""
    try:
        worker.app.broker.stop_consuming(queues)
    except CeleriacError as exc:
        logger.error(
            "could not stop consuming %s (%s): what it received returns when this process's "
            "connection closes",
            ", ".join(queues),
            exc,
        )


class SharedOverrides:
    """The published :class:`Overrides`, and the version each child applied, in memory shared
    across the fork (made before the first child)."""

    def __init__(self, first: Overrides, slots: int) -> None:
        self._seq = SharedInts(1)
        self._len = SharedInts(1)
        self._data = SharedBytes(SIZE)
        #: per child slot: the version it applied last (0: none yet)
        self._applied = SharedInts(slots)
        self.current = first
        self.publish(first)

    @property
    def version(self) -> int:
        return self._seq[0] // 2

    # -- the supervisor's side ------------------------------------------------------------------
    def publish(self, overrides: Overrides) -> int:
        """Make ``overrides`` current (one writer at a time: the caller holds its lock); the new
        version."""
        data = overrides.encode()
        if len(data) > SIZE:
            raise Unsupported(
                f"too many run-time changes to pass to the prefork children ({len(data)} bytes, "
                f"room for {SIZE}); restart the worker with them in its configuration"
            )
        self._seq[0] += 1  # odd: being written
        self._data.write(0, data)
        self._len[0] = len(data)
        self._seq[0] += 1
        self.current = overrides
        return self.version

    def forget(self, slot: int) -> None:
        """Slot ``slot`` gets a new child: nothing applied there yet."""
        self._applied[slot] = 0

    def wait_applied(self, version: int, slots: Iterable[int], timeout: float) -> list[int]:
        """Wait until the children in ``slots`` applied ``version``; the slots that did not."""
        deadline = time.monotonic() + timeout
        pending = list(slots)
        while True:
            pending = [s for s in pending if self._applied[s] < version]
            if not pending or time.monotonic() >= deadline:
                return pending
            time.sleep(0.01)

    # -- a child's side -------------------------------------------------------------------------
    def read(self) -> tuple[int, Overrides]:
        """The current version and overrides (the last complete write)."""
        while True:
            before = self._seq[0]
            if before % 2 == 0:
                data = self._data.read(0, self._len[0])
                if self._seq[0] == before:
                    return before // 2, Overrides.decode(data)
            time.sleep(0.001)  # being written: look again

    def applied(self, slot: int, version: int) -> None:
        self._applied[slot] = version


class Follower:
    """In a child: applies the published overrides now, then whenever they change."""

    def __init__(self, shared: SharedOverrides, slot: int, worker: Worker) -> None:
        self.shared, self.slot, self.worker = shared, slot, worker
        self._seen = 0

    def sync(self) -> None:
        if self.shared.version == self._seen:
            return
        version, overrides = self.shared.read()
        dropped = [q for q in self.worker.queues if q not in overrides.queues]
        apply(self.worker, overrides)
        # Acknowledged once no fetch with the old queue list is under way: after a reply to
        # cancel_consumer, nothing more is leased from that queue.
        self.worker.consumer.between_fetches()
        if dropped and self.worker.consumer.fetcher is not None:
            stop_consuming(self.worker, dropped)
        self._seen = version
        self.shared.applied(self.slot, version)
        logger.debug("applied run-time settings version %d", version)

    def start(self) -> None:
        self.sync()
        threading.Thread(target=self._run, name="celeriac-overrides", daemon=True).start()

    def _run(self) -> None:
        # Changes made while the worker starts are applied once its fetcher exists.
        self.worker.ready.wait()
        while True:
            try:
                self.sync()
            except Exception:  # a bad change must not stop later ones from applying
                logger.exception("could not apply run-time settings")
            time.sleep(POLL)
