"""The pool inside a consuming prefork child: one task at a time, on the process's main thread.

A child of the prefork supervisor (``worker/supervisor.py``) is a whole worker of concurrency 1:
its own broker connection, fetcher and finisher. This pool runs that worker's tasks on the main
thread, where SIGALRM can interrupt a blocking call for the soft time limit.

A running task cannot be stopped in place, so a hard time limit or ``revoke(terminate=True)``
ends the process instead: a watchdog thread reports the task's outcome (FAILURE
TimeLimitExceeded, or REVOKED), lets the consumer store and acknowledge it, gives the
prefetched messages back, and exits; the supervisor starts a fresh child. If the watchdog
cannot run (C code holding the GIL), the supervisor kills the child a little later from the
deadline this pool publishes (see :class:`Deadline`); its messages then come back like those of
any dead worker.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from types import FrameType
from typing import TYPE_CHECKING

from celeriac.exceptions import MemoryLimitExceeded
from celeriac.worker.executor import execute, hard_time_limit, revoked, time_limits
from celeriac.worker.job import Job, Outcome
from celeriac.worker.limits import alarm_soft_limit
from celeriac.worker.pools._process import rss_bytes
from celeriac.worker.pools.inline import InlinePool

if TYPE_CHECKING:
    from celeriac.app import Celeriac

logger = logging.getLogger("celeriac.worker")

#: Exit code of a child that ended itself on purpose (time limit, terminate, retirement).
EXIT_REPLACE = 0


class Deadline:
    """Where a child publishes when its running task must be over (monotonic seconds, 0: none).

    The supervisor reads it from shared memory; ``time.monotonic`` is one clock for all
    processes of a machine.
    """

    def set(self, when: float) -> None:  # pragma: no cover - replaced by the supervisor's slot
        pass


class ChildPool(InlinePool):
    can_terminate = True

    def __init__(
        self,
        app: Celeriac,
        concurrency: int,
        on_outcome: Callable[[Outcome], None],
        *,
        max_tasks_per_child: int | None = None,
        max_memory_per_child: int | None = None,
        deadline: Deadline | None = None,
    ) -> None:
        super().__init__(
            app,
            1,
            on_outcome,
            max_tasks_per_child=max_tasks_per_child,
            max_memory_per_child=max_memory_per_child,
        )
        #: Published for the supervisor's backstop.
        self.deadline = deadline or Deadline()
        #: How much later than a hard time limit the supervisor kills a stuck child.
        self.grace = 3.0
        self._lock = threading.Lock()
        self._current: Job | None = None
        self._abandoning = False
        self._watch = threading.Condition(self._lock)
        self._watchdog: threading.Thread | None = None
        self._hard_until = 0.0
        self.ran = 0
        #: True while the task itself runs (not the consumer's work around it)
        self._in_task = False
        # The supervisor's signal that this process outgrew max_memory_per_child mid-task.
        signal.signal(signal.SIGUSR1, self._on_memory_signal)

    def _on_memory_signal(self, signum: int, frame: FrameType | None) -> None:
        if self._in_task:
            limit = self.max_memory_per_child or 0
            raise MemoryLimitExceeded(
                f"the process grew to {rss_bytes() // 1024} KiB, over "
                f"max_memory_per_child={limit} KiB, while the task ran"
            )

    @contextmanager
    def _task_limits(self, seconds: float | None) -> Iterator[None]:
        """Around the task's own code: the soft time limit, and the memory signal armed."""
        self._in_task = True
        try:
            with alarm_soft_limit(seconds):
                yield
        finally:
            self._in_task = False

    def _run(self, job: Job) -> None:
        task = self.app.tasks.get(job.headers.task)
        hard = time_limits(self.app, task, job.headers)[0] if task is not None else None
        with self._lock:
            self._current = job
            if hard:
                self._hard_until = time.monotonic() + hard
                self.deadline.set(self._hard_until + self.grace)
                self._arm_watchdog()
        self.started(job, os.getpid())
        outcome = execute(self.app, job, self._task_limits)
        with self._lock:
            self._current = None
            abandoned = self._abandoning
            if hard:
                self._hard_until = 0.0
                self.deadline.set(0.0)
                self._watch.notify_all()
        if abandoned:
            # Reported already (time limit, terminate); this process is about to end.
            threading.Event().wait()
        self.on_outcome(outcome)
        self.ran += 1
        if self._should_retire():
            self._retiring = True
            if self.on_retire is not None:
                self.on_retire()

    def _should_retire(self) -> bool:
        if self.max_tasks_per_child and self.ran >= self.max_tasks_per_child:
            logger.info("child %d ran %d tasks; replacing it", os.getpid(), self.ran)
            return True
        if self.max_memory_per_child:
            rss = rss_bytes()
            if rss > self.max_memory_per_child * 1024:
                logger.warning(
                    "child %d uses %d KiB, over max_memory_per_child; replacing it",
                    os.getpid(),
                    rss // 1024,
                )
                return True
        return False

    # -- stopping a task that cannot be stopped in place -----------------------------------------
    def _arm_watchdog(self) -> None:
        if self._watchdog is None:
            self._watchdog = threading.Thread(
                target=self._watch_loop, name="celeriac-watchdog", daemon=True
            )
            self._watchdog.start()
        self._watch.notify_all()

    def _watch_loop(self) -> None:
        while True:
            with self._lock:
                while True:
                    until = self._hard_until
                    left = until - time.monotonic() if until else None
                    if left is not None and left <= 0 and self._current is not None:
                        break
                    self._watch.wait(left)
                job = self._current
                self._hard_until = 0.0
            task = self.app.tasks.get(job.headers.task)
            limit = (time_limits(self.app, task, job.headers)[0] if task is not None else 0) or 0
            logger.error(
                "task %s[%s] exceeded its hard time limit (%ss); replacing this child",
                job.headers.task,
                job.headers.id,
                limit,
            )
            self._abandon(job, hard_time_limit(self.app, job, float(limit)))

    def terminate(self, task_id: str) -> None:
        with self._lock:
            job = self._current
            if job is None or job.headers.id != task_id or self._abandoning:
                return
        threading.Thread(
            target=self._abandon,
            args=(job, revoked(self.app, job, terminated=True)),
            name="celeriac-terminate",
            daemon=True,
        ).start()

    def _abandon(self, job: Job, outcome: Outcome) -> None:
        with self._lock:
            if self._abandoning or self._current is not job:
                return  # finished meanwhile, or already being abandoned
            self._abandoning = True
            # Handing the work back takes a moment: keep the supervisor's backstop off meanwhile.
            self.deadline.set(time.monotonic() + 30.0)
        try:
            if self.on_abandon is not None:
                self.on_abandon(outcome)
        except Exception:
            logger.exception("could not hand back this child's work before replacing it")
        finally:
            os._exit(EXIT_REPLACE)
