"""Runs tasks in a fixed set of threads: good for I/O-bound tasks, light on memory."""

from __future__ import annotations

import os
import queue
import threading

from celeriac.worker.executor import execute
from celeriac.worker.job import Job
from celeriac.worker.limits import thread_soft_limit
from celeriac.worker.pools.base import Pool, drain_jobs


class ThreadPool(Pool):
    def start(self) -> None:
        self._jobs: queue.Queue[Job | None] = queue.Queue()
        self._threads = [
            threading.Thread(target=self._run, name=f"celeriac-thread-{i}", daemon=True)
            for i in range(self.concurrency)
        ]
        for t in self._threads:
            t.start()

    def _run(self) -> None:
        while True:
            job = self._jobs.get()
            if job is None:
                return
            skipped = self.take_revoked(job)
            if skipped is not None:
                self.on_outcome(skipped)
                continue
            self.started(job, os.getpid())
            self.on_outcome(execute(self.app, job, thread_soft_limit))

    def submit(self, job: Job) -> None:
        self._jobs.put(job)

    def stop(self, *, cold: bool = False) -> list[Job]:
        unstarted = drain_jobs(self._jobs)
        for _ in self._threads:
            self._jobs.put(None)
        if not cold:
            for t in self._threads:
                t.join()
        return unstarted
