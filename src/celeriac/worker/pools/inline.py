"""Pools that run one task at a time on the thread that serves them (solo, a prefork child).

That thread also drives the consumer: between tasks it calls :attr:`Pool.pump`, which applies
the finished outcomes and, when no job is waiting, fetches the next batch (see
:meth:`Consumer.pump`). Subclasses say how to run one job.
"""

from __future__ import annotations

import queue
import threading
from abc import abstractmethod
from typing import Any

from celeriac.worker.job import Job
from celeriac.worker.pools.base import Pool, drain_jobs, take_waiting_jobs


class InlinePool(Pool):
    drives_consumer = True

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._jobs: queue.SimpleQueue[Job | None] = queue.SimpleQueue()
        self._done = threading.Event()
        #: Set by a subclass that wants its process replaced: serve() ends after this job.
        self._retiring = False

    def start(self) -> None:
        pass

    def submit(self, job: Job) -> None:
        self._jobs.put(job)

    @abstractmethod
    def _run(self, job: Job) -> None:
        """Run one job on this thread and report its outcome."""

    def serve(self) -> None:
        """Run jobs on this thread until :meth:`stop` (or retirement)."""
        pump = self.pump
        try:
            while not self._retiring:
                if pump is None:
                    job = self._jobs.get()
                else:
                    try:
                        job = self._jobs.get_nowait()
                    except queue.Empty:
                        pump(False)  # apply outcomes, fetch the next batch
                        continue
                if job is None:
                    break
                skipped = self.take_revoked(job)
                if skipped is not None:
                    self.on_outcome(skipped)
                    continue
                self._run(job)
                if pump is not None and not self._retiring:
                    pump(not self._jobs.empty())
        finally:
            self._done.set()

    def take_queued(self) -> list[Job]:
        """Jobs handed to this pool that never started (the pool takes no more afterwards)."""
        return drain_jobs(self._jobs)

    def take_waiting(self) -> list[Job]:
        return take_waiting_jobs(self._jobs)

    def stop(self, *, cold: bool = False) -> list[Job]:
        unstarted = self.take_queued()
        self._jobs.put(None)
        if not cold:
            self._done.wait()
        return unstarted + self.take_queued()
