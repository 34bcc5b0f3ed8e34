"""Runs each task on the worker's own thread, one at a time. Simple and easy to debug.

The thread that called :meth:`Worker.start` runs the tasks and, between them, drives the
consumer (see :mod:`celeriac.worker.pools.inline`), so a solo worker is one thread doing
everything in turn, plus the consumer's small lease-renewal and revocation threads.
"""

from __future__ import annotations

import os

from celeriac.worker.executor import execute
from celeriac.worker.job import Job
from celeriac.worker.limits import thread_soft_limit
from celeriac.worker.pools.inline import InlinePool


class SoloPool(InlinePool):
    def _run(self, job: Job) -> None:
        self.started(job, os.getpid())
        self.on_outcome(execute(self.app, job, thread_soft_limit))
