"""What the dashboard asks the cluster every few seconds: worker stats and queue depths.

Remote control answers within a timeout, so it is asked on a thread of its own and pages
read the last answers; each queue's depth is sampled at the same time, and the change between
two samples is the queue's rate (messages per second, positive while it grows).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from celeriac.app import Celeriac

logger = logging.getLogger("celeriac.dashboard")

#: s between two polls
POLL_EVERY = 3.0


@dataclass(frozen=True)
class QueueInfo:
    name: str
    depth: int | None
    #: messages per second, net (None until two samples exist)
    rate: float | None
    #: s the oldest ready message has waited, where the broker can tell without consuming
    oldest_age: float | None
    consumers: tuple[str, ...] = ()


@dataclass
class Snapshot:
    at: float = 0.0
    stats: dict[str, dict[str, Any]] = field(default_factory=dict)
    queues: list[QueueInfo] = field(default_factory=list)
    error: str = ""


class Cluster:
    """Polls the cluster (module docstring); :attr:`snapshot` is the latest answer."""

    def __init__(
        self, app: Celeriac, every: float = POLL_EVERY, queues: Iterable[str] = ()
    ) -> None:
        self.app = app
        self.every = every
        #: queues shown besides those the app and the workers name (given, or seen in events)
        self.queues: set[str] = set(queues)
        self.snapshot = Snapshot()
        self._depths: dict[str, tuple[float, int]] = {}
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._thread = threading.Thread(target=self._run, name="celeriac-cluster", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        self._thread.join(5.0)

    def refresh_soon(self) -> None:
        """Poll now rather than at the next tick (after an action changed something)."""
        self._wake.set()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.snapshot = self.poll()
            except Exception as exc:
                logger.warning("polling the cluster failed: %s", exc)
                self.snapshot = Snapshot(time.time(), self.snapshot.stats, [], str(exc))
            self._wake.wait(self.every)
            self._wake.clear()

    def poll(self) -> Snapshot:
        inspect = self.app.control.inspect(timeout=1.0)
        stats = inspect.stats() or {}
        active_queues = inspect.active_queues() or {}
        consumers: dict[str, list[str]] = {}
        for node, queues in active_queues.items():
            for q in queues or ():
                name = q.get("name") if isinstance(q, dict) else None
                if name:
                    consumers.setdefault(str(name), []).append(node)
        names = {
            self.app.conf.task_default_queue,
            *self.app.topology.queues,
            *consumers,
            *list(self.queues),
        }
        return Snapshot(
            time.time(),
            stats,
            [self._queue(n, tuple(sorted(consumers.get(n, ())))) for n in sorted(names)],
        )

    def _queue(self, name: str, consumers: tuple[str, ...]) -> QueueInfo:
        broker = self.app.broker
        now = time.time()
        try:
            depth: int | None = broker.depth(name)
            oldest = broker.oldest_age(name)
        except Exception as exc:
            logger.warning("queue %s: %s", name, exc)
            return QueueInfo(name, None, None, None, consumers)
        rate = None
        before = self._depths.get(name)
        if before is not None and depth is not None and now > before[0]:
            rate = (depth - before[1]) / (now - before[0])
        if depth is not None:
            self._depths[name] = (now, depth)
        return QueueInfo(name, depth, rate, oldest, consumers)
