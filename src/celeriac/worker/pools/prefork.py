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
import time
from multiprocessing.connection import Connection, wait
from typing import TYPE_CHECKING

from celeriac import signals
from celeriac.worker.executor import (
    Job,
    Outcome,
    execute,
    hard_time_limit,
    revoked,
    time_limits,
    worker_lost,
)
from celeriac.worker.limits import alarm_soft_limit
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
    signals.worker_process_init.send(None)
    while True:
        try:
            job = conn.recv()
        except (EOFError, OSError):
            return
        if job is _STOP:
            return
        # Tasks run on this process's main thread, where SIGALRM can interrupt even a sleep.
        conn.send((execute(app, job, alarm_soft_limit), _rss_bytes()))


def _rss_bytes() -> int:
    """This process's resident memory (Linux /proc; 0 where unavailable)."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * _PAGE
    except (OSError, ValueError, IndexError):
        return 0


_PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


class _Slot:
    """One child process and the thread that feeds it, one job at a time."""

    def __init__(self, pool: PreforkPool, index: int) -> None:
        self.pool = pool
        self.index = index
        self.process: BaseProcess | None = None
        self.conn: Connection | None = None
        self.tasks_done = 0
        self.current: Job | None = None
        self.terminating = False
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

    def kill(self) -> None:
        proc = self.process
        if proc is not None and proc.pid:
            with contextlib.suppress(ProcessLookupError):
                os.kill(proc.pid, signal.SIGKILL)

    def run(self) -> None:
        pool = self.pool
        while True:
            job = pool.jobs.get()
            if job is _STOP:
                self.retire()
                return
            skipped = pool.take_revoked(job)
            if skipped is not None:
                pool.on_outcome(skipped)
                continue
            if self.process is None or not self.process.is_alive():
                self.spawn()
            outcome, rss = self.run_job(job)
            pool.on_outcome(outcome)
            self.tasks_done += 1
            if pool.max_tasks_per_child and self.tasks_done >= pool.max_tasks_per_child:
                self.retire()
            elif pool.max_memory_per_child and rss > pool.max_memory_per_child * 1024:
                logger.warning(
                    "child %s uses %d KiB, over max_memory_per_child; replacing it",
                    self.process.pid if self.process else "?",
                    rss // 1024,
                )
                self.retire()

    def run_job(self, job: Job) -> tuple[Outcome, int]:
        assert self.process is not None and self.conn is not None
        app = self.pool.app
        try:
            self.conn.send(job)
        except (BrokenPipeError, OSError):
            self._reap()
            return worker_lost(app, job, "child process exited before the task"), 0
        self.pool.started(job, self.process.pid or 0)
        task = app.tasks.get(job.headers.task)
        hard = time_limits(app, task, job.headers)[0] if task is not None else None
        deadline = None if hard is None else time.monotonic() + hard
        self.current, self.terminating = job, False
        try:
            timeout = None if deadline is None else max(0.0, deadline - time.monotonic())
            ready = wait([self.conn, self.process.sentinel], timeout)
            if self.conn in ready:
                with contextlib.suppress(EOFError, OSError):
                    outcome, rss = self.conn.recv()
                    return outcome, rss
            if not ready:  # the hard time limit passed: the child is killed, not asked
                assert hard is not None
                self.kill()
                code = self._reap()
                logger.error(
                    "task %s[%s] exceeded its hard time limit (%ss); child killed",
                    job.headers.task,
                    job.headers.id,
                    hard,
                )
                return hard_time_limit(app, job, hard), 0
            code = self._reap()
            if self.terminating:
                return revoked(app, job, terminated=True), 0
            logger.error(
                "child process for task %s[%s] died (exit code %s); replacing it",
                job.headers.task,
                job.headers.id,
                code,
            )
            return worker_lost(app, job, f"child process exited with code {code}"), 0
        finally:
            self.current = None

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
    can_terminate = True

    def start(self) -> None:
        self.jobs: queue.Queue[Job | None] = queue.Queue()
        self.slots = [_Slot(self, i) for i in range(self.concurrency)]
        for slot in self.slots:
            slot.spawn()
        for slot in self.slots:
            slot.thread.start()

    def submit(self, job: Job) -> None:
        self.jobs.put(job)

    def child_pids(self) -> list[int]:
        return [s.process.pid for s in self.slots if s.process is not None and s.process.pid]

    def terminate(self, task_id: str) -> None:
        for slot in self.slots:
            job = slot.current
            if job is not None and job.headers.id == task_id:
                slot.terminating = True
                slot.kill()

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
                slot.kill()
        else:
            for slot in self.slots:
                slot.thread.join()
        return unstarted
