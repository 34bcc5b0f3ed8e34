"""The prefork worker's parent when its children consume: start them, replace them, stop them.

Each child is a complete worker of concurrency 1 (its own broker connection, fetcher, finisher;
tasks on its main thread, see ``pools/child.py``). The parent runs no task and does no broker
work per task; it only

* starts ``concurrency`` children (forked, with the app already imported) and starts a new one
  whenever one ends: retired after ``max_tasks_per_child``/``max_memory_per_child``, ended after
  a hard time limit or ``terminate``, or crashed (then with a back-off if it keeps crashing
  young, so a broken import does not spin);
* keeps custody of what the children lease (``custody.py``): renews it from this process, and
  settles what a child held when it dies (a crash requeues the running message with its delivery
  counted; what it leased ahead and never started goes back uncounted);
* backs up the children's own hard time limits: a child whose task is still running a little
  after its limit (C code holding the GIL can keep the child's watchdog from running) is killed
  and its task fails with ``TimeLimitExceeded``;
* enforces ``max_memory_per_child`` while a task runs: a child that grows past it is told to
  stop the task (``MemoryLimitExceeded`` raised in it) and killed if it cannot;
* turns the first SIGTERM/SIGINT into a warm shutdown of every child (each finishes its task and
  returns its prefetched messages) and the second into a cold one;
* passes what remote control changes at run time (rate and time limits, queues, the pool's
  size) to the children (``overrides.py``), and grows or shrinks the pool (``pool_grow``,
  ``pool_shrink``) up to ``worker_max_pool_size`` children, the size its shared memory was
  made for.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import replace
from functools import partial
from types import FrameType
from typing import TYPE_CHECKING

from celeriac import signals
from celeriac._fork import fork_guard
from celeriac.exceptions import Unsupported
from celeriac.health.pulse import Pulse
from celeriac.keyring import keyring_of
from celeriac.worker.banner import announce
from celeriac.worker.custody import Custody, Death
from celeriac.worker.events import start_heart
from celeriac.worker.lease_slots import SlotWriter
from celeriac.worker.overrides import Follower, Overrides, SharedOverrides, apply
from celeriac.worker.pools._process import Forked, die_with_parent, rss_of, wait_ready
from celeriac.worker.pools.child import EXIT_REPLACE, ChildPool, Deadline
from celeriac.worker.resize import pool_capacity, resized
from celeriac.worker.revoked import Revoked, RevokedRing
from celeriac.worker.shared import SharedFloats
from celeriac.worker.worker import Worker

if TYPE_CHECKING:
    from celeriac.worker.monitor import Monitor

logger = logging.getLogger("celeriac.worker")

_TICK = 0.25
#: A child that ends sooner than this after starting counts as crashing young.
_YOUNG = 2.0
_BACKOFF_MAX = 10.0
#: How long a child told to stop a task for its memory gets before it is killed.
_MEMORY_GRACE = 2.0


class _SharedDeadline(Deadline):
    def __init__(self, cells: SharedFloats, index: int) -> None:
        self.cells, self.index = cells, index

    def set(self, when: float) -> None:
        self.cells[self.index] = when


class Supervisor:
    def __init__(self, worker: Worker) -> None:
        self.worker = worker
        self.app = worker.app
        self.size = worker.concurrency
        # Shared memory is made once, before the first fork: for as many children as the pool
        # may grow to. A child slot is "wanted" while the pool's size includes it.
        self.capacity = cap = pool_capacity(worker)
        self.wanted = [i < self.size for i in range(cap)]
        #: messages each child may hold (the same for children added later)
        self.child_prefetch = max(1, worker.prefetch // self.size)
        # One double per child: when its running task must be over (0: no hard limit running).
        self.deadlines = SharedFloats(cap)
        self.children: list[Forked | None] = [None] * cap
        self.born = [0.0] * cap
        self.crashes = [0] * cap
        self.respawn_at = [0.0] * cap
        self._stopping = False
        # Re-entrant: the signal handler takes it on the main thread, which may hold it already.
        self._lock = threading.RLock()
        self.custody = Custody(self.app, cap)
        # Revoked ids reach the children (which consume) through shared memory, and so do the
        # settings remote control changes.
        worker.revoked = Revoked(RevokedRing())
        self.overrides = SharedOverrides(Overrides(tuple(worker.queues), self.size), cap)
        #: why this process killed a child, until it is reaped: (death, detail)
        self._killed: list[tuple[Death, str] | None] = [None] * cap
        #: when a child over its memory limit was told to stop its task (monotonic; 0: not yet)
        self._memory_warned = [0.0] * cap
        #: bumped by every turn of the loop: /livez (``worker/monitor.py``)
        self.pulse = Pulse()
        self.monitor: Monitor | None = None

    # -- running ---------------------------------------------------------------------------------
    def run(self) -> None:
        worker, app = self.worker, self.app
        if worker.install_signal_handlers:
            signal.signal(signal.SIGTERM, self._on_signal)
            signal.signal(signal.SIGINT, self._on_signal)
        # This process forks while its own threads (probes, remote control, events) talk to
        # the broker: each fork waits until none is inside a database call (celeriac/_fork.py).
        fork_guard.arm()
        app.import_modules()
        # With signing on, its keyring is built here, on this thread, before any fork: that
        # imports hashlib and hmac (imported on first use), and a child forked while another
        # thread of this process imports a module would wait forever for its import lock.
        keyring_of(app.conf)
        # Children open their own connections; the node name in the settings is what lets
        # them share one copy of each broadcast.
        if not app.conf.worker_hostname:
            app.conf.worker_hostname = worker.hostname
        from celeriac.worker.monitor import monitor_for

        # Before the first fork: children count their tasks where this process reads them.
        monitor = self.monitor = monitor_for(
            worker,
            pulse=self.pulse,
            consuming=self._consuming,
            active=lambda: self.custody.slots.active(),
            supervised=True,
        )
        if monitor is not None:
            monitor.start()
        for i in range(self.size):
            self._spawn(i)
        self.custody.start()
        if worker.autoscale is not None:
            from celeriac.worker.autoscale import supervisor_autoscaler

            worker.autoscaler = supervisor_autoscaler(self, worker.autoscale)
        worker.start_remote_control()
        slots = self.custody.slots
        heart = None
        if worker.heartbeat:  # the children send task events; this process the node's
            heart = start_heart(app, worker.hostname, lambda: (slots.active(), slots.processed()))
        worker.ready.set()
        if worker._stopping:  # Worker.stop() came while starting
            self.stop()
        signals.worker_ready.send(worker)
        per_child = f"{self.child_prefetch} per child"
        announce(
            app,
            worker.hostname,
            worker.queues,
            "prefork",
            self.size,
            per_child,
            consuming_children=True,
        )
        try:
            self._loop()
        finally:
            if worker.autoscaler is not None:
                worker.autoscaler.stop()
            worker.stop_remote_control()
            if heart is not None:
                heart.stop()
            if monitor is not None:
                monitor.stop()
            self.custody.stop()
            worker._stopped.set()
        logger.warning("%s stopped", worker.hostname)

    def _loop(self) -> None:
        while True:
            self.pulse.beat()
            with self._lock:
                alive = {p.sentinel: i for i, p in enumerate(self.children) if p is not None}
                stopping = self._stopping
            if stopping and not alive:
                return
            for sentinel in wait_ready(alive, _TICK):
                self._reap(alive[sentinel])
            if not stopping:
                self._respawn_due()
                self._enforce_deadlines()
                self._enforce_memory()

    def _consuming(self) -> bool:
        """Ready, not stopping, and at least one child alive (/readyz)."""
        # No lock: a probe must answer even while the loop is stuck holding it.
        return (
            self.worker.ready.is_set()
            and not self._stopping
            and any(p is not None for p in self.children)
        )

    def _spawn(self, index: int) -> None:
        proc = Forked(
            target=_child_main,
            args=(
                self.worker,
                os.getpid(),
                self.child_prefetch,
                _SharedDeadline(self.deadlines, index),
                self.custody.writer(index),
                self.worker.revoked,
                (self.overrides, index),
            ),
            name=f"ForkPoolWorker-{index + 1}",
        )
        self.deadlines[index] = 0.0
        self._killed[index] = None
        self._memory_warned[index] = 0.0
        self.overrides.forget(index)
        # A stop signal that reaches the child before it has its own handlers would run this
        # process's handler there (and the child would never stop): held back across the fork,
        # it waits in the child until _child_main is ready for it.
        held = signal.pthread_sigmask(signal.SIG_BLOCK, _STOP_SIGNALS)
        try:
            proc.start()
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, held)
        self.children[index] = proc
        self.born[index] = time.monotonic()
        # The mask above holds signals back from this thread only: another thread can take a
        # SIGTERM, and Python then runs the handler (stop) on this thread between any two lines,
        # before the child above was listed for it to signal. Left running, that child would
        # keep this process waiting for it for ever.
        if self._stopping:
            with contextlib.suppress(ProcessLookupError):
                os.kill(proc.pid, signal.SIGTERM)

    def _reap(self, index: int) -> None:
        proc = self.children[index]
        if proc is None:
            return
        # Reaped and unlisted in one step under the lock: terminate() (another thread) kills
        # only a listed child, which is not reaped yet, so its pid cannot belong to another
        # process, and it cannot mark the next child of this slot with this one's death.
        with self._lock:
            proc.join(1)
            code = proc.exitcode
            self.children[index] = None
            stopping = self._stopping
            killed = self._killed[index]
        self.deadlines[index] = 0.0
        if code != EXIT_REPLACE:  # it did not settle what it held: settle it here
            death, detail = killed or (Death.CRASHED, f"exit code {code}")
            self.custody.child_died(index, death, detail)
        if stopping:
            return
        if not self.wanted[index]:
            logger.info("child %s ended: the pool shrank", proc.pid)
            return
        lived = time.monotonic() - self.born[index]
        if code == EXIT_REPLACE:
            self.crashes[index] = 0
            logger.info("child %s ended after %.1fs; starting another", proc.pid, lived)
            self.respawn_at[index] = 0.0
            self._respawn_due()
            return
        crashes = self.crashes[index] = self.crashes[index] + 1 if lived < _YOUNG else 1
        pause = 0.0 if crashes <= 1 else min(0.1 * 2**crashes, _BACKOFF_MAX)
        logger.error(
            "child process %s exited with code %s; starting another%s",
            proc.pid,
            code,
            f" in {pause:.1f}s" if pause else "",
        )
        self.respawn_at[index] = time.monotonic() + pause

    def _respawn_due(self) -> None:
        now = time.monotonic()
        with self._lock:
            for i, proc in enumerate(self.children):
                if (
                    proc is None
                    and self.wanted[i]
                    and self.respawn_at[i] <= now
                    and not self._stopping
                ):
                    try:
                        self._spawn(i)
                    except OSError as exc:  # fork refused (EAGAIN, ENOMEM), out of fds
                        logger.error("cannot start a child process (%s); trying again in 1s", exc)
                        self.respawn_at[i] = now + 1.0

    def _enforce_deadlines(self) -> None:
        now = time.monotonic()
        for i, proc in enumerate(self.children):
            deadline = self.deadlines[i]
            if proc is None or not deadline or now < deadline or not proc.pid:
                continue
            logger.error(
                "child %s is still running a task past its hard time limit; killing it",
                proc.pid,
            )
            self.deadlines[i] = 0.0
            detail = "hard time limit exceeded; the process was killed"
            self._kill(i, proc.pid, Death.TIME_LIMIT, detail)

    def _kill(self, index: int, pid: int, death: Death, detail: str) -> None:
        # Under the lock, as terminate() (a revoke, from another thread) records its reason:
        # the first reason a child was killed for is its death's, never overwritten by a
        # second kill that came after it.
        with self._lock:
            if self._killed[index] is None:
                self._killed[index] = (death, detail)
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)

    def terminate(self, index: int, task_id: str, signame: str) -> bool:
        """Stop ``task_id``, running in child ``index``, for a revoke: the child is killed and
        the task ends REVOKED (``custody.py``). The child's own SIGTERM, SIGINT and SIGUSR1
        mean other things (a warm stop, nothing, the memory limit), so those become SIGKILL."""
        sig = _signal_of(signame)
        if sig in (signal.SIGTERM, signal.SIGINT, signal.SIGUSR1):
            sig = signal.SIGKILL
        with self._lock:  # see _reap
            proc = self.children[index]
            if proc is None or not proc.pid or self._killed[index] is not None:
                return False
            running = self.custody.slots.running(index)
            if running is None or str(running.get("id")) != task_id:
                return False  # the child finished that task since the caller looked
            logger.warning("task %s revoked: killing child %s (%s)", task_id, proc.pid, sig.name)
            self._killed[index] = (Death.REVOKED, task_id)
            with contextlib.suppress(ProcessLookupError):
                os.kill(proc.pid, sig)
        return True

    def _enforce_memory(self) -> None:
        """A child over ``max_memory_per_child`` while it runs a task is told to stop the task
        (SIGUSR1: it raises MemoryLimitExceeded there), and killed if it is still over the
        limit a little later (C code can keep it from acting)."""
        limit = self.worker.max_memory_per_child
        if not limit:
            return
        now = time.monotonic()
        for i, proc in enumerate(self.children):
            if proc is None or not proc.pid or self._killed[i] is not None:
                continue
            rss = rss_of(proc.pid)
            if rss <= limit * 1024 or not self.custody.held(i):
                self._memory_warned[i] = 0.0
                continue
            detail = (
                f"the process grew to {rss // 1024} KiB, over max_memory_per_child="
                f"{limit} KiB, while the task ran"
            )
            if not self._memory_warned[i]:
                self._memory_warned[i] = now
                logger.error("child %s: %s; stopping its task", proc.pid, detail)
                with contextlib.suppress(ProcessLookupError):
                    os.kill(proc.pid, signal.SIGUSR1)
            elif now - self._memory_warned[i] > _MEMORY_GRACE:
                logger.error("child %s did not stop its task; killing it", proc.pid)
                self._kill(i, proc.pid, Death.MEMORY, detail)

    # -- run-time changes (remote control) -------------------------------------------------------
    def change(self, how: Callable[[Overrides], Overrides], timeout: float = 3.0) -> None:
        """Change the run-time settings with ``how`` here and in every child; returns once each
        running child applied them (or after ``timeout`` s, logged)."""
        with self._lock:
            new = how(self.overrides.current)
            version = self.overrides.publish(new)
            apply(
                self.worker, new
            )  # what this process reports, and what children forked later inherit
            live = [i for i, p in enumerate(self.children) if p is not None and self.wanted[i]]
        started = time.monotonic()
        late = self.overrides.wait_applied(version, live, timeout)
        logger.info(
            "run-time settings version %d applied by %d of %d child(ren) in %.0f ms",
            version,
            len(live) - len(late),
            len(live),
            (time.monotonic() - started) * 1e3,
        )
        if late and timeout > 0:  # 0: the caller does not wait (a resize), nothing is late
            logger.warning(
                "%d child(ren) did not apply the new settings within %.0fs; they apply them "
                "when they can",
                len(late),
                timeout,
            )

    def resize(self, delta: int) -> int:
        """Grow (``delta`` > 0) or shrink the pool; the new size. Children added start within a
        tick; children retired finish their running task first (a warm stop)."""
        with self._lock:
            if self._stopping:
                raise Unsupported(f"{self.worker.hostname} is shutting down")
            size = resized(self.worker.hostname, self.size, delta, self.capacity)
            free = [i for i in range(self.capacity) if not self.wanted[i]]
            # New slots: empty ones first; else one whose child is still finishing (it is
            # replaced once it ends).
            free.sort(key=lambda i: self.children[i] is not None)
            for i in free[: max(0, delta)]:
                self.wanted[i] = True
                self.respawn_at[i] = 0.0
                self.crashes[i] = 0
            if delta < 0:
                busy = [i for i in range(self.capacity) if self.wanted[i]]
                # Retire idle children first, then the newest slots.
                busy.sort(key=lambda i: (bool(self.custody.held(i)), i))
                for i in busy[:-delta]:
                    self.wanted[i] = False
                    proc = self.children[i]
                    if proc is not None and proc.pid:
                        with contextlib.suppress(ProcessLookupError):
                            os.kill(proc.pid, signal.SIGTERM)
            self.size = size
            self.worker.concurrency = size
            self.worker.prefetch = size * self.child_prefetch
        # Each child's part of a per-worker rate limit follows the size.
        self.change(lambda o: replace(o, size=size), timeout=0.0)
        logger.warning("pool resized to %d child(ren)", size)
        return size

    # -- stopping --------------------------------------------------------------------------------
    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        if self._stopping:
            logger.warning("second signal: cold shutdown (running tasks are abandoned)")
            self.stop(cold=True)
            return
        logger.warning(
            "warm shutdown: children finish their running tasks (send the signal again to stop "
            "at once)"
        )
        self.stop()

    def stop(self, *, cold: bool = False) -> None:
        with self._lock:
            first = not self._stopping
            self._stopping = True
        if self.worker.autoscaler is not None:  # no joining here: this may be a signal handler
            self.worker.autoscaler.halt()
        if first:
            signals.worker_shutdown.send(self.worker)
        sig = signal.SIGKILL if cold else signal.SIGTERM
        # Under the lock, as in terminate(): a listed child is not reaped yet, so its pid is
        # still its own (this may run on a remote-control thread while the loop reaps).
        with self._lock:
            for proc in self.children:
                if proc is not None and proc.pid:
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(proc.pid, sig)
        if cold:
            self.app.close()
            os._exit(1)


def _signal_of(name: str) -> signal.Signals:
    """A signal by name (``"KILL"``, ``"SIGKILL"``, ``"9"``); SIGTERM for one unknown here."""
    text = name.upper()
    try:
        if text.isdigit():
            return signal.Signals(int(text))
        return signal.Signals[text if text.startswith("SIG") else f"SIG{text}"]
    except (KeyError, ValueError):
        logger.warning("unknown signal %r; using SIGTERM", name)
        return signal.SIGTERM


#: Signals a child must not see before it has installed its own handlers.
_STOP_SIGNALS = {signal.SIGTERM, signal.SIGINT}


def _child_main(
    worker: Worker,
    parent_pid: int,
    prefetch: int,
    deadline: Deadline,
    slot: SlotWriter,
    revoked: Revoked,
    overrides: tuple[SharedOverrides, int],
) -> None:
    die_with_parent(parent_pid)
    # The parent decides about shutdown; a Ctrl-C in the terminal must not kill tasks midway.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signals.worker_process_init.send(None)
    child = Worker(
        worker.app,
        queues=worker.queues,
        concurrency=1,
        pool=partial(ChildPool, deadline=deadline),
        hostname=worker.hostname,
        prefetch_multiplier=prefetch,
        max_tasks_per_child=worker.max_tasks_per_child,
        max_memory_per_child=worker.max_memory_per_child,
        install_signal_handlers=False,
        announce=False,
    )
    Follower(*overrides, child).start()  # queues, limits, rate share: now and as they change
    child.revoked = revoked  # the supervisor's ring: ids revoked after this fork too
    child.activity.on_start = slot.running  # what runs, where remote control reads it
    slot.attach(child.consumer.inflight)  # what it holds, where this supervisor sees it
    # Warm only, however often: a SIGTERM to the whole process group reaches a child twice
    # (directly and from the parent), and a cold stop is the parent's SIGKILL.
    signal.signal(signal.SIGTERM, lambda signum, frame: child.stop_soon())
    signal.pthread_sigmask(signal.SIG_UNBLOCK, _STOP_SIGNALS)  # held since the fork (_spawn)
    child.start()
