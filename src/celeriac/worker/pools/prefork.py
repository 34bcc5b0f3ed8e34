"""Runs tasks in child processes, one task per child at a time, under a supervisor.

Each slot has a supervising thread in the worker process that hands its child one job at a
time over a pipe and waits for the outcome *or* the child's death. A child that dies (killed,
segfault, ``os._exit``) is replaced at once, and its job is reported as worker-lost, so the
consumer can requeue it with its delivery counted; a poison task therefore cannot loop forever.
Children are forked, so they start with the app and its tasks already imported.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import multiprocessing as mp
import os
import queue
import signal
import sys
import threading
from multiprocessing.connection import Connection, wait
from typing import TYPE_CHECKING, Any

from celeriac.worker.executor import Job, execute, worker_lost
from celeriac.worker.pools.base import Pool

if TYPE_CHECKING:
    from multiprocessing.process import BaseProcess

    from celeriac.app import Celeriac

logger = logging.getLogger("celeriac.worker")
_STOP = None
_PR_SET_PDEATHSIG = 1


def _die_with_parent(parent_pid: int) -> None:
    """Have the kernel kill this child when the worker dies (Linux).

    Otherwise a worker killed with SIGKILL leaves children finishing tasks whose messages the
    broker is about to deliver again: the same task would run twice at once.
    """
    if sys.platform.startswith("linux"):
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
        except (OSError, AttributeError):
            logger.warning("cannot ask the kernel to stop pool children with the worker")
    if os.getppid() != parent_pid:  # the parent died before prctl took effect
        os._exit(1)


def _child_main(app: Celeriac, conn: Connection, parent_pid: int) -> None:
    _die_with_parent(parent_pid)
    # The parent decides about shutdown; a Ctrl-C in the terminal must not kill tasks midway.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    while True:
        try:
            job = conn.recv()
        except (EOFError, OSError):
            return
        if job is _STOP:
            return
        conn.send(execute(app, job))


class _Slot:
    """One child process and the thread that feeds it."""

    def __init__(self, pool: PreforkPool, index: int) -> None:
        self.pool = pool
        self.index = index
        self.process: BaseProcess | None = None
        self.conn: Connection | None = None
        self.tasks_done = 0
        self.thread = threading.Thread(target=self.run, name=f"celeriac-slot-{index}", daemon=True)

    def spawn(self) -> None:
        parent_conn, child_conn = mp.Pipe()
        ctx = mp.get_context("fork")
        proc = ctx.Process(
            target=_child_main,
            args=(self.pool.app, child_conn, os.getpid()),
            name=f"celeriac-child-{self.index}",
            daemon=True,
        )
        proc.start()
        child_conn.close()
        self.process, self.conn, self.tasks_done = proc, parent_conn, 0

    def retire(self) -> None:
        """Ask the child to exit after its current job and wait for it."""
        if self.process is None or self.conn is None:
            return
        with contextlib.suppress(BrokenPipeError, OSError):
            self.conn.send(_STOP)
        self.process.join(5)
        if self.process.is_alive():
            self.process.kill()
            self.process.join()
        self.conn.close()
        self.process = self.conn = None

    def run(self) -> None:
        pool = self.pool
        while True:
            job = pool.jobs.get()
            if job is _STOP:
                self.retire()
                return
            if self.process is None or not self.process.is_alive():
                self.spawn()
            pool.on_outcome(self.run_job(job))
            self.tasks_done += 1
            limit = pool.max_tasks_per_child
            if limit and self.tasks_done >= limit:
                self.retire()

    def run_job(self, job: Job) -> Any:
        assert self.process is not None and self.conn is not None
        try:
            self.conn.send(job)
        except (BrokenPipeError, OSError):
            self._reap()
            return worker_lost(self.pool.app, job, "child process exited before the task")
        with self.pool.busy_lock:
            self.pool.running[job.job_id] = self
        try:
            ready = wait([self.conn, self.process.sentinel])
            if self.conn in ready:
                try:
                    return self.conn.recv()
                except (EOFError, OSError):
                    pass
            code = self._reap()
            logger.error(
                "child process for task %s[%s] died (exit code %s); replacing it",
                job.headers.task,
                job.headers.id,
                code,
            )
            return worker_lost(self.pool.app, job, f"child process exited with code {code}")
        finally:
            with self.pool.busy_lock:
                self.pool.running.pop(job.job_id, None)

    def _reap(self) -> int | None:
        proc = self.process
        code = None
        if proc is not None:
            proc.join(1)
            code = proc.exitcode
        if self.conn is not None:
            self.conn.close()
        self.process = self.conn = None
        return code


class PreforkPool(Pool):
    def start(self) -> None:
        self.jobs: queue.Queue[Job | None] = queue.Queue()
        self.running: dict[int, _Slot] = {}
        self.busy_lock = threading.Lock()
        self.slots = [_Slot(self, i) for i in range(self.concurrency)]
        for slot in self.slots:
            slot.spawn()
        for slot in self.slots:
            slot.thread.start()

    def submit(self, job: Job) -> None:
        self.jobs.put(job)

    def child_pids(self) -> list[int]:
        return [s.process.pid for s in self.slots if s.process is not None and s.process.pid]

    def stop(self, *, cold: bool = False) -> list[Job]:
        unstarted: list[Job] = []
        while True:
            try:
                job = self.jobs.get_nowait()
            except queue.Empty:
                break
            if job is not None:
                unstarted.append(job)
        for _ in self.slots:
            self.jobs.put(_STOP)
        if cold:
            for slot in self.slots:
                if slot.process is not None and slot.process.pid:
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(slot.process.pid, signal.SIGKILL)
        else:
            for slot in self.slots:
                slot.thread.join()
        return unstarted
