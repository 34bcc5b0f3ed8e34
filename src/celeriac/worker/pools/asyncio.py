"""Runs tasks on one event loop: ``-c`` coroutines in flight, sync tasks in threads.

``async def`` tasks are awaited directly on the loop; plain functions run in the loop's default
thread executor so a blocking task never stalls the coroutines. Time limits cancel the
coroutine; ``revoke(terminate=True)`` cancels it too.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import os
import threading

from celeriac.worker.executor import execute_async, revoked
from celeriac.worker.job import Job, Outcome
from celeriac.worker.pools.base import Pool

_SYNC_THREADS = 32


class AsyncioPool(Pool):
    can_terminate = True

    def start(self) -> None:
        self._loop = asyncio.new_event_loop()
        self._loop.set_default_executor(
            concurrent.futures.ThreadPoolExecutor(
                max_workers=min(self.concurrency, _SYNC_THREADS),
                thread_name_prefix="celeriac-sync",
            )
        )
        self._pending: list[Job] = []
        self._running: dict[str, asyncio.Task[None]] = {}
        self._terminated: set[str] = set()
        self._slots = asyncio.Semaphore(self.concurrency)
        self._stopping = False
        self._idle = threading.Event()
        self._idle.set()
        self._thread = threading.Thread(
            target=self._loop.run_forever, name="celeriac-asyncio", daemon=True
        )
        self._thread.start()

    def submit(self, job: Job) -> None:
        self._idle.clear()
        self._loop.call_soon_threadsafe(self._enqueue, job)

    # -- on the loop ---------------------------------------------------------------------------
    def _enqueue(self, job: Job) -> None:
        self._pending.append(job)
        self._loop.create_task(self._run(job))

    async def _run(self, job: Job) -> None:
        async with self._slots:
            if self._stopping or job not in self._pending:
                return
            self._pending.remove(job)
            outcome = self.take_revoked(job)
            if outcome is None:
                current = asyncio.current_task()
                assert current is not None
                self._running[job.headers.id] = current
                self.started(job, os.getpid())
                try:
                    outcome = await execute_async(self.app, job)
                except asyncio.CancelledError:
                    outcome = revoked(self.app, job, terminated=True)
                finally:
                    self._running.pop(job.headers.id, None)
                if job.headers.id in self._terminated:
                    self._terminated.discard(job.headers.id)
                    outcome = revoked(self.app, job, terminated=True)
            self._report(outcome)

    def _report(self, outcome: Outcome) -> None:
        self.on_outcome(outcome)
        if not self._running and not self._pending:
            self._idle.set()

    def _cancel(self, task_id: str) -> None:
        running = self._running.get(task_id)
        if running is not None:
            self._terminated.add(task_id)
            running.cancel()

    def _take_pending(self) -> list[Job]:
        self._stopping = True
        jobs, self._pending = self._pending, []
        if not self._running:
            self._idle.set()
        return jobs

    # -- from other threads --------------------------------------------------------------------
    def terminate(self, task_id: str) -> None:
        self._loop.call_soon_threadsafe(self._cancel, task_id)

    def stop(self, *, cold: bool = False) -> list[Job]:
        unstarted = asyncio.run_coroutine_threadsafe(self._async_take(), self._loop).result()
        if not cold:
            self._idle.wait()
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)
        return unstarted

    async def _async_take(self) -> list[Job]:
        return self._take_pending()
