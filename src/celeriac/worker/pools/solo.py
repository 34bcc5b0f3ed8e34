"""Runs each task on the worker's own thread, one at a time. Simple and easy to debug.

The thread that called :meth:`Worker.start` runs the tasks and, between them, drives the
consumer (see :meth:`Consumer.pump`): it applies the finished outcomes and fetches the next
batch itself, so a solo worker is one thread doing everything in turn, plus the consumer's
small lease-renewal and revocation threads.
"""

from __future__ import annotations

import os
import queue
import threading

from celeriac.worker.executor import execute
from celeriac.worker.job import Job
from celeriac.worker.limits import thread_soft_limit
from celeriac.worker.pools.base import Pool, drain_jobs


class SoloPool(Pool):
    drives_consumer = True

    def start(self) -> None:
        self._jobs: queue.SimpleQueue[Job | None] = queue.SimpleQueue()
        self._done = threading.Event()

    def submit(self, job: Job) -> None:
        self._jobs.put(job)

    def serve(self) -> None:
        """Run jobs on this thread until :meth:`stop`."""
        pump = self.pump
        try:
            while True:
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
                self.started(job, os.getpid())
                self.on_outcome(execute(self.app, job, thread_soft_limit))
                if pump is not None:
                    pump(not self._jobs.empty())
        finally:
            self._done.set()

    def take_queued(self) -> list[Job]:
        return drain_jobs(self._jobs)

    def stop(self, *, cold: bool = False) -> list[Job]:
        unstarted = self.take_queued()
        self._jobs.put(None)
        if not cold:
            self._done.wait()
        return unstarted + self.take_queued()
