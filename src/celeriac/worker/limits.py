"""Time and rate limits, in the forms the pools need them."""

from __future__ import annotations

import ctypes
import heapq
import itertools
import math
import re
import signal
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from types import FrameType

from celeriac.exceptions import ConfigurationError, SoftTimeLimitExceeded
from celeriac.worker.job import Job


def nullcontext_factory(seconds: float | None) -> AbstractContextManager[object]:
    return nullcontext()


@contextmanager
def alarm_soft_limit(seconds: float | None) -> Iterator[None]:
    """Raise SoftTimeLimitExceeded in this (main) thread after ``seconds``, via SIGALRM.

    SIGALRM interrupts blocking calls such as ``time.sleep``, so this is what prefork children,
    which run tasks on their main thread, use.
    """
    if not seconds:
        yield
        return

    def on_alarm(signum: int, frame: FrameType | None) -> None:
        raise SoftTimeLimitExceeded(f"soft time limit ({seconds}s) exceeded")

    previous = signal.signal(signal.SIGALRM, on_alarm)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


@contextmanager
def thread_soft_limit(seconds: float | None) -> Iterator[None]:
    """Raise SoftTimeLimitExceeded in this thread after ``seconds`` (any thread).

    The exception is delivered between bytecodes, so a task blocked inside one long C call
    (a ``time.sleep(60)``) only sees it when that call returns.
    """
    if not seconds:
        yield
        return
    target = threading.get_ident()
    lock = threading.Lock()
    done = False
    fired = False

    def fire() -> None:
        nonlocal fired
        with lock:
            if done:
                return
            fired = True
            ctypes.pythonapi.PyThreadState_SetAsyncExc(
                ctypes.c_ulong(target), ctypes.py_object(SoftTimeLimitExceeded)
            )

    timer = threading.Timer(seconds, fire)
    timer.daemon = True
    timer.start()
    try:
        yield
    finally:
        with lock:
            done = True
            if fired:
                # Fired as the task ended and not raised yet: it must not land in whatever this
                # thread does next (a solo worker's broker calls). NULL clears a pending one.
                ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(target), None)
        timer.cancel()


_RATE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(?:/\s*([smh]))?\s*$")
_PERIODS = {"s": 1.0, "m": 60.0, "h": 3600.0}


def parse_rate(rate: str | float | int | None) -> float | None:
    """Celery's rate strings as tasks per second: ``"10/s"``, ``"100/m"``, ``"5/h"``, ``10``."""
    if rate is None or rate == "" or rate == 0:
        return None
    if isinstance(rate, int | float):
        return float(rate)
    match = _RATE.match(rate)
    if not match:
        raise ConfigurationError(f"bad rate limit {rate!r}; use e.g. '10/s', '100/m', '5/h'")
    count = float(match.group(1))
    return count / _PERIODS[match.group(2) or "s"] if count else None


class RateSchedule:
    """Per-worker rate limit: hands out start times at most ``rate`` per second.

    Like GCRA: each call reserves the next free slot and says when it begins, so callers
    schedule work instead of spinning on a bucket.
    """

    def __init__(self, per_second: float) -> None:
        self.interval = 1.0 / per_second
        self._next = 0.0
        self._lock = threading.Lock()

    def reserve(self, now: float | None = None) -> float:
        now = time.time() if now is None else now
        with self._lock:
            start = max(now, self._next)
            self._next = start + self.interval
            return start


class RateScheduler:
    """Holds rate-limited jobs until their start time, then hands them to the pool."""

    def __init__(self) -> None:
        self._heap: list[tuple[float, int, Job]] = []
        self._seq = itertools.count()
        self._cond = threading.Condition()
        self._stopped = False
        self.submit: Callable[[Job], None] | None = None

    def waiting(self) -> list[tuple[float, Job]]:
        """The jobs waiting for their slot, with when each may start (remote ``scheduled``)."""
        with self._cond:
            return [(when, job) for when, _, job in sorted(self._heap)]

    def at(self, when: float, job: Job) -> None:
        with self._cond:
            heapq.heappush(self._heap, (when, next(self._seq), job))
            self._cond.notify()

    def holding(self) -> bool:
        """Is any job waiting for its rate-limit slot? (Read without the lock: a hint.)"""
        return bool(self._heap)

    def next_due(self) -> float:
        """When the next held job may start (``time.time()``); infinity when none is held."""
        with self._cond:
            return self._heap[0][0] if self._heap else math.inf

    def take_all(self) -> list[Job]:
        """Stop and return the jobs still waiting (a shutting-down worker gives them back)."""
        with self._cond:
            self._stopped = True
            jobs = [job for _, _, job in sorted(self._heap)]
            self._heap.clear()
            self._cond.notify()
        return jobs

    def stop(self) -> None:
        self.take_all()

    def run(self) -> None:
        while True:
            with self._cond:
                while not self._stopped and (not self._heap or self._heap[0][0] > time.time()):
                    timeout = self._heap[0][0] - time.time() if self._heap else None
                    self._cond.wait(timeout)
                if self._stopped:
                    return
                _, _, job = heapq.heappop(self._heap)
            assert self.submit is not None
            self.submit(job)
