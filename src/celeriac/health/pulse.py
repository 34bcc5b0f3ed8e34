"""Liveness: a timestamp the worker's loop bumps; stale means wedged.

A prefork worker's supervisor bumps it on every turn of its loop (4 times a second). Other
pools have no loop of their own that turns while tasks run, so a :class:`LockWatch` bumps it
each time it can take the consumer's lock (twice a second): a consumer deadlocked holding that
lock, or a process whose threads no longer run, stops the bumps. A long task does not.
"""

from __future__ import annotations

import threading
import time
from typing import Protocol


class Pulse:
    """When the watched loop last turned (monotonic seconds)."""

    def __init__(self) -> None:
        self.last = time.monotonic()

    def beat(self) -> None:
        self.last = time.monotonic()

    def age(self) -> float:
        return time.monotonic() - self.last


class _Lock(Protocol):
    def acquire(self, blocking: bool = ..., timeout: float = ...) -> bool: ...

    def release(self) -> None: ...


class LockWatch:
    """Bumps ``pulse`` every ``interval`` s that ``lock`` can be taken."""

    def __init__(self, pulse: Pulse, lock: _Lock, interval: float = 0.5) -> None:
        self.pulse, self.lock, self.interval = pulse, lock, interval
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._run, name="celeriac-pulse", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def _run(self) -> None:
        while not self._stopped.wait(self.interval):
            if self.lock.acquire(True, self.interval):
                self.lock.release()
                self.pulse.beat()

    def stop(self) -> None:
        self._stopped.set()
