"""What a consumer is working on, described as Celery's ``inspect active``/``reserved`` do.

A task is *active* once its pool started it and until its outcome is settled; *reserved* while
it is held (leased and checked) but not started. :func:`request_info` is Celery's
``Request.info()``: ``id``, ``name``, ``args``, ``kwargs``, ``type``, ``hostname``,
``time_start``, ``acknowledged``, ``delivery_info``, ``worker_pid``.
"""

from __future__ import annotations

import json
import threading
import time
from collections import Counter
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from celeriac.brokers.base import Delivery
    from celeriac.protocol.message import Message
    from celeriac.worker.inflight import InFlight
    from celeriac.worker.job import Job
    from celeriac.worker.pools.base import Pool


def _arguments(message: Message) -> tuple[Any, Any]:
    """The task's args and kwargs for a reply (JSON): decoded from a JSON body, else the
    producer's reprs."""
    if message.content_type == "application/json" and not message.headers.get("compression"):
        try:
            body = json.loads(message.body)
            if isinstance(body, list) and len(body) >= 2:
                return body[0], body[1]
        except ValueError:
            pass
    return message.headers.get("argsrepr"), message.headers.get("kwargsrepr")


def request_info(
    message: Message,
    queue: str,
    hostname: str,
    *,
    time_start: float | None = None,
    pid: int | None = None,
    acknowledged: bool = False,
    redelivered: bool = False,
) -> dict[str, Any]:
    args, kwargs = _arguments(message)
    name = message.headers.get("task")
    return {
        "id": message.task_id,
        "name": name,
        "args": args,
        "kwargs": kwargs,
        "type": name,
        "hostname": hostname,
        "time_start": time_start,
        "acknowledged": acknowledged,
        "delivery_info": {
            "exchange": "",
            "routing_key": queue,
            "priority": message.properties.get("priority"),
            "redelivered": redelivered,
        },
        "worker_pid": pid,
    }


_PRUNE_FLOOR = 1024


class Activity:
    """Which held tasks started, when and in which process; counts per task name."""

    def __init__(self, hostname: str) -> None:
        self.hostname = hostname
        self._started: dict[str, tuple[float, int]] = {}
        #: forget settled tasks' starts once _started grows past this (see started())
        self._prune_above = _PRUNE_FLOOR
        self._lock = threading.Lock()
        #: tasks started, by name (``stats()["total"]``)
        self.total: Counter[str] = Counter()
        self.inflight: InFlight | None = None
        #: called with a task as it starts, its start time and pid (a prefork child mirrors
        #: it: ``lease_slots.py``)
        self.on_start: Callable[[Job, float, int], None] | None = None

    def attach(self, pool: Pool, inflight: InFlight) -> None:
        """Learn of every start of ``pool``'s tasks (chained before its own hook)."""
        self.inflight = inflight
        then = pool.on_started

        def started(job: Job, pid: int) -> None:
            self.started(job, pid)
            if then is not None:
                then(job, pid)

        pool.on_started = started

    def started(self, job: Job, pid: int) -> None:
        now = time.time()
        with self._lock:
            self._started[job.headers.id] = (now, pid)
            self.total[job.headers.task] += 1
            grown = len(self._started) > self._prune_above
        if grown and self.inflight is not None:
            # Settled tasks are forgotten here too, not only when asked for active(): a prefork
            # child is never asked (its supervisor answers from the lease slots), and kept one
            # entry per task it ever ran (measured: +3 MB per child after 20,000 tasks).
            self._prune(set(self.inflight.task_ids()))
        if self.on_start is not None:
            self.on_start(job, now, pid)

    def _prune(self, working: set[str]) -> set[str]:
        """Forget the starts of tasks no longer worked on; the ids of those that are."""
        with self._lock:
            for gone in [t for t in self._started if t not in working]:
                del self._started[gone]
            # Twice what is left: pruning stays amortised O(1) per start however many are held.
            self._prune_above = max(_PRUNE_FLOOR, 2 * len(self._started))
            return set(self._started)

    def _held(self) -> list[tuple[Delivery, bool]]:
        """Held deliveries worked on, each with whether it started."""
        inflight = self.inflight
        if inflight is None:
            return []
        working = set(inflight.task_ids())
        started = self._prune(working)
        return [
            (d, d.message.task_id in started)
            for d in inflight.held()
            if d.message.task_id in working
        ]

    def active(self) -> list[dict[str, Any]]:
        out = []
        for d, started in self._held():
            if started:
                at, pid = self._started.get(d.message.task_id or "", (None, None))
                out.append(
                    request_info(
                        d.message,
                        d.queue,
                        self.hostname,
                        time_start=at,
                        pid=pid,
                        acknowledged=True,
                        redelivered=d.redelivered,
                    )
                )
        return out

    def reserved(self) -> list[dict[str, Any]]:
        return [
            request_info(d.message, d.queue, self.hostname, redelivered=d.redelivered)
            for d, started in self._held()
            if not started
        ]
