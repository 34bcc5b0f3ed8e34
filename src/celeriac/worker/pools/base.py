"""The pool interface: take jobs, report outcomes, give back what never started."""

from __future__ import annotations

import logging
import queue
import threading
from abc import ABC, abstractmethod
from collections.abc import Callable
from typing import TYPE_CHECKING

from celeriac.worker.executor import revoked
from celeriac.worker.job import Job, Outcome

if TYPE_CHECKING:
    from celeriac.app import Celeriac
    from celeriac.worker.revoked import Revoked

OutcomeCallback = Callable[[Outcome], None]


def drain_jobs(jobs: queue.Queue[Job | None] | queue.SimpleQueue[Job | None]) -> list[Job]:
    """Take every job waiting in ``jobs`` without blocking (stop markers dropped)."""
    taken: list[Job] = []
    while True:
        try:
            job = jobs.get_nowait()
        except queue.Empty:
            return taken
        if job is not None:
            taken.append(job)


def take_waiting_jobs(jobs: queue.Queue[Job | None] | queue.SimpleQueue[Job | None]) -> list[Job]:
    """Take every job waiting in ``jobs`` while the pool keeps running: stop markers (a
    stop or a shrink under way) go back in, after the jobs they followed."""
    taken: list[Job] = []
    markers = 0
    while True:
        try:
            job = jobs.get_nowait()
        except queue.Empty:
            break
        if job is None:
            markers += 1
        else:
            taken.append(job)
    for _ in range(markers):
        jobs.put(None)
    return taken


logger = logging.getLogger("celeriac.worker")


class Pool(ABC):
    """Runs jobs concurrently and reports each :class:`Outcome` through ``on_outcome``."""

    #: Whether :meth:`revoke` with ``terminate=True`` can stop a running task.
    can_terminate = False
    #: Whether :meth:`serve` drives the consumer by calling :attr:`pump` between tasks (then
    #: the consumer starts no fetcher or finisher thread of its own).
    drives_consumer = False

    def __init__(
        self,
        app: Celeriac,
        concurrency: int,
        on_outcome: OutcomeCallback,
        *,
        max_tasks_per_child: int | None = None,
        max_memory_per_child: int | None = None,
    ) -> None:
        self.app = app
        self.concurrency = concurrency
        self.on_outcome = on_outcome
        self.max_tasks_per_child = max_tasks_per_child
        self.max_memory_per_child = max_memory_per_child
        self._revoked: set[str] = set()
        #: ids revoked by broadcast (remote control), set by the worker
        self.revoked_ids: Revoked | None = None
        self._revoked_lock = threading.Lock()
        #: Called as a job starts, with the pid running it (STARTED state, when tracked).
        self.on_started: Callable[[Job, int], None] | None = None
        #: Set by the worker: asks it for a warm stop (a pool that wants its process replaced).
        self.on_retire: Callable[[], None] | None = None
        #: Set by the worker: applies the outcome of a task that cannot be stopped in place and
        #: hands back what never started, before the pool ends the process.
        self.on_abandon: Callable[[Outcome], None] | None = None
        #: Set by the consumer of a pool that :attr:`drives_consumer`: call it between tasks
        #: with whether a job is waiting (it applies outcomes, and fetches when none waits).
        self.pump: Callable[[bool], None] | None = None

    def started(self, job: Job, pid: int) -> None:
        if self.on_started is not None:
            self.on_started(job, pid)

    @abstractmethod
    def start(self) -> None: ...

    def serve(self) -> None:  # noqa: B027 - only pools that run tasks on the main thread
        """Runs on the worker's main thread once consuming has begun. Pools that run tasks
        there return only when stopped; the others return at once."""

    def take_queued(self) -> list[Job]:
        """Jobs submitted but not started, taken back (pools that can end their process)."""
        return []

    def take_waiting(self) -> list[Job]:
        """Jobs submitted but not started, taken back while the pool keeps running (each
        taken either here or by the pool, never both). Pools without a waiting list: none."""
        return []

    @abstractmethod
    def submit(self, job: Job) -> None:
        """Queue a job; it runs when a slot is free. Must not block for long."""

    @abstractmethod
    def stop(self, *, cold: bool = False) -> list[Job]:
        """Stop taking jobs; return those that never started.

        Warm (``cold=False``): running jobs finish and report first. Cold: they are abandoned
        (their messages come back when their leases run out).
        """

    def revoke(self, task_id: str, *, terminate: bool = False) -> None:
        """Do not start ``task_id``; with ``terminate``, stop it if it is running."""
        with self._revoked_lock:
            self._revoked.add(task_id)
        if terminate:
            if self.can_terminate:
                self.terminate(task_id)
            else:
                logger.warning(
                    "the %s pool cannot stop running task %s", type(self).__name__, task_id
                )

    def terminate(self, task_id: str) -> None:  # noqa: B027 - only for pools that can
        """Stop a running task (pools with ``can_terminate``)."""

    def take_revoked(self, job: Job) -> Outcome | None:
        """Called just before a job starts: the outcome to report instead, when revoked."""
        with self._revoked_lock:
            mine = job.headers.id in self._revoked
            self._revoked.discard(job.headers.id)
        if mine:
            return revoked(self.app, job, terminated=False)
        if self.revoked_ids is not None and job.headers.id in self.revoked_ids:
            return revoked(self.app, job, terminated=False, store=True)
        return None
