"""Runs tasks in a fixed set of threads: good for I/O-bound tasks, light on memory."""

from __future__ import annotations

import os
import queue
import threading

from celeriac.worker.executor import execute
from celeriac.worker.job import Job
from celeriac.worker.limits import thread_soft_limit
from celeriac.worker.pools.base import Pool, drain_jobs, take_waiting_jobs


class ThreadPool(Pool):
    def start(self) -> None:
        self._jobs: queue.Queue[Job | None] = queue.Queue()
        self._threads: list[threading.Thread] = []
        self._add(self.concurrency)

    def _add(self, n: int) -> None:
        for _ in range(n):
            t = threading.Thread(
                target=self._run, name=f"celeriac-thread-{len(self._threads)}", daemon=True
            )
            t.start()
            self._threads.append(t)

    def resize(self, delta: int) -> None:
        """Start ``delta`` more threads, or end ``-delta`` of them (each after the jobs queued
        before its stop marker: a running task is never cut short)."""
        if delta > 0:
            self._add(delta)
        for _ in range(-delta):
            self._jobs.put(None)
        self.concurrency += delta

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

    def take_waiting(self) -> list[Job]:
        return take_waiting_jobs(self._jobs)

    def stop(self, *, cold: bool = False) -> list[Job]:
        unstarted = drain_jobs(self._jobs)
        for _ in self._threads:
            self._jobs.put(None)
        if not cold:
            for t in self._threads:
                t.join()
        return unstarted
