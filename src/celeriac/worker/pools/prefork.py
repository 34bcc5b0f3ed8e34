"""Runs tasks in child processes, one task per child at a time, under a supervisor.

Each slot has a supervising thread in the worker process that hands its child one job at a
time over a pipe and waits for the outcome *or* the child's death. A child that dies (killed,
segfault, ``os._exit``) is replaced at once, and its job is reported as worker-lost, so the
consumer can requeue it with its delivery counted; a poison task therefore cannot loop forever.
Children are forked, so they start with the app and its tasks already imported.
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing as mp
import os
import pickle
import queue
import signal
import threading
import time
from collections import deque
from multiprocessing.connection import Connection, wait
from typing import TYPE_CHECKING

from celeriac import signals
from celeriac.worker.executor import (
    execute,
    hard_time_limit,
    revoked,
    time_limits,
    worker_lost,
)
from celeriac.worker.job import Job, Outcome
from celeriac.worker.limits import alarm_soft_limit
from celeriac.worker.pools._process import die_with_parent, rss_bytes
from celeriac.worker.pools.base import Pool, drain_jobs

if TYPE_CHECKING:
    from multiprocessing.process import BaseProcess

    from celeriac.app import Celeriac

logger = logging.getLogger("celeriac.worker")
_STOP = b"stop"
_PICKLE = pickle.HIGHEST_PROTOCOL


def _child_main(app: Celeriac, conn: Connection, parent_pid: int, report_rss: bool) -> None:
    die_with_parent(parent_pid)
    # The parent decides about shutdown; a Ctrl-C in the terminal must not kill tasks midway.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signals.worker_process_init.send(None)
    while True:
        try:
            job = conn.recv_bytes()
        except (EOFError, OSError):
            return
        if job == _STOP:
            return
        # Tasks run on this process's main thread, where SIGALRM can interrupt even a sleep.
        outcome = execute(app, Job.from_wire(app, pickle.loads(job)), alarm_soft_limit)
        rss = rss_bytes() if report_rss else 0  # a /proc read per task only when it is needed
        conn.send_bytes(pickle.dumps((outcome.to_wire(), rss), _PICKLE))


class _Slot:
    """One child process and the thread that feeds it.

    With ``worker_prefork_pipeline`` above 1 the thread keeps that many jobs in the child's
    pipe, so a child finishing a short task starts the next at once instead of waiting for this
    thread to be scheduled (on small machines that wait is much of a short task's cost). It only
    queues a second job when no other slot is idle, but a job already queued behind a long task
    waits for it even if another child frees up, which is why the default is 1. The job at the
    head of the pipe is the running one: time limits, ``terminate`` and child death apply to it;
    jobs behind it never started and go back to the pool's queue.
    """

    def __init__(self, pool: PreforkPool, index: int) -> None:
        self.pool = pool
        self.index = index
        self.process: BaseProcess | None = None
        self.conn: Connection | None = None
        self.sent = 0
        self.inflight: deque[Job] = deque()
        self.head_started = 0.0
        self.terminating = False
        self.thread = threading.Thread(target=self.run, name=f"celeriac-slot-{index}", daemon=True)

    @property
    def current(self) -> Job | None:
        return self.inflight[0] if self.inflight else None

    def spawn(self) -> None:
        parent_conn, child_conn = mp.Pipe()
        ctx = mp.get_context("fork")
        proc = ctx.Process(
            target=_child_main,
            args=(self.pool.app, child_conn, os.getpid(), bool(self.pool.max_memory_per_child)),
            name=f"celeriac-child-{self.index}",
            daemon=True,
        )
        proc.start()
        child_conn.close()
        self.process, self.conn, self.sent = proc, parent_conn, 0

    def retire(self) -> None:
        """Ask the child to exit (its pipe is empty) and wait for it."""
        if self.process is None or self.conn is None:
            return
        with contextlib.suppress(BrokenPipeError, OSError):
            self.conn.send_bytes(_STOP)
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
        stopping = False
        while True:
            if not stopping:
                stopping = self._fill()
            if not self.inflight:
                if stopping:
                    self.retire()
                    return
                continue
            self._finish_head()

    def _room(self) -> bool:
        limit = self.pool.max_tasks_per_child
        if limit and self.process is not None and self.sent >= limit:
            if self.inflight:
                return False  # this child is done after what it has; no more jobs for it
            self.retire()  # a fresh child takes the next job
        if not self.inflight:
            return True
        return len(self.inflight) < self.pool.pipeline and self.pool.idle == 0

    def _fill(self) -> bool:
        """Send jobs while there is room; True when the pool is stopping."""
        pool = self.pool
        while self._room():
            if self.inflight:
                try:
                    job = pool.jobs.get_nowait()
                except queue.Empty:
                    return False
            else:
                with pool.idle_lock:
                    pool.idle += 1
                try:
                    job = pool.jobs.get()
                finally:
                    with pool.idle_lock:
                        pool.idle -= 1
            if job is None:
                return True
            skipped = pool.take_revoked(job)
            if skipped is not None:
                pool.on_outcome(skipped)
                continue
            if self.process is None:
                self.spawn()
            assert self.process is not None and self.conn is not None
            try:
                # Plain pickle of plain tuples: multiprocessing's own send() builds a
                # ForkingPickler per call, which cost more than a short task itself.
                self.conn.send_bytes(pickle.dumps(job.to_wire(), _PICKLE))
            except (BrokenPipeError, OSError):
                pool.jobs.put(job)  # never reached the child
                self._child_gone(None)
                return False
            self.sent += 1
            self.inflight.append(job)
            if len(self.inflight) == 1:
                self._head_begins()
        return False

    def _head_begins(self) -> None:
        self.head_started = time.monotonic()
        self.terminating = False
        assert self.process is not None
        self.pool.started(self.inflight[0], self.process.pid or 0)

    def _finish_head(self) -> None:
        """Wait for the running job's outcome, its hard time limit, or the child's death."""
        assert self.process is not None and self.conn is not None
        pool, app, job = self.pool, self.pool.app, self.inflight[0]
        task = app.tasks.get(job.headers.task)
        hard = time_limits(app, task, job.headers)[0] if task is not None else None
        timeout = None if hard is None else max(0.0, self.head_started + hard - time.monotonic())
        if self.inflight and len(self.inflight) < pool.pipeline and timeout is None:
            timeout = 0.05  # look for more work to queue behind the running job now and then
        ready = wait([self.conn, self.process.sentinel], timeout)
        if self.conn in ready:
            try:
                wire, rss = pickle.loads(self.conn.recv_bytes())
            except (EOFError, OSError):
                ready = [self.process.sentinel]
            else:
                self.inflight.popleft()
                pool.on_outcome(Outcome.from_wire(wire))
                if self.inflight:
                    self._head_begins()
                self._maybe_replace(rss)
                return
        if not ready:
            if hard is None or time.monotonic() < self.head_started + hard:
                return  # only the look-for-work timeout
            self.kill()
            self._reap()
            logger.error(
                "task %s[%s] exceeded its hard time limit (%ss); child killed",
                job.headers.task,
                job.headers.id,
                hard,
            )
            self._child_gone(hard_time_limit(app, job, hard))
            return
        code = self._reap()
        if self.terminating:
            self._child_gone(revoked(app, job, terminated=True))
            return
        logger.error(
            "child process for task %s[%s] died (exit code %s); replacing it",
            job.headers.task,
            job.headers.id,
            code,
        )
        self._child_gone(worker_lost(app, job, f"child process exited with code {code}"))

    def _child_gone(self, head_outcome: Outcome | None) -> None:
        """The child is dead: report the running job, hand the queued ones to other slots, and
        start a replacement at once (not when the next job comes)."""
        self._reap()
        self.spawn()
        if self.inflight:
            head = self.inflight.popleft()
            if head_outcome is None:
                head_outcome = worker_lost(self.pool.app, head, "child process exited")
            self.pool.on_outcome(head_outcome)
        while self.inflight:
            self.pool.jobs.put(self.inflight.popleft())

    def _maybe_replace(self, rss: int) -> None:
        pool = self.pool
        if self.inflight:
            return
        if pool.max_tasks_per_child and self.sent >= pool.max_tasks_per_child:
            self.retire()
        elif pool.max_memory_per_child and rss > pool.max_memory_per_child * 1024:
            logger.warning(
                "child %s uses %d KiB, over max_memory_per_child; replacing it",
                self.process.pid if self.process else "?",
                rss // 1024,
            )
            self.retire()

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

    #: jobs queued in a child's pipe at most (1: strictly one at a time)
    pipeline = 2

    def start(self) -> None:
        self.jobs: queue.Queue[Job | None] = queue.Queue()
        self.idle = 0
        self.idle_lock = threading.Lock()
        self.pipeline = max(1, self.app.conf.worker_prefork_pipeline)
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
        unstarted = drain_jobs(self.jobs)
        for _ in self.slots:
            self.jobs.put(None)
        if cold:
            for slot in self.slots:
                slot.kill()
        else:
            for slot in self.slots:
                slot.thread.join()
            # Jobs a dying child handed back after the queue was drained above.
            unstarted += drain_jobs(self.jobs)
        return unstarted
