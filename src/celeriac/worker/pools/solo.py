"""Runs each task in the consumer's own thread, one at a time. Simple and easy to debug."""

from __future__ import annotations

import os

from celeriac.worker.executor import execute
from celeriac.worker.job import Job
from celeriac.worker.limits import thread_soft_limit
from celeriac.worker.pools.base import Pool


class SoloPool(Pool):
    def start(self) -> None:
        pass

    def submit(self, job: Job) -> None:
        skipped = self.take_revoked(job)
        if skipped is not None:
            self.on_outcome(skipped)
            return
        self.started(job, os.getpid())
        self.on_outcome(execute(self.app, job, thread_soft_limit))

    def stop(self, *, cold: bool = False) -> list[Job]:
        return []
