"""Living with ``fork``: a cheap "was this process forked since?" check, and a guard that keeps
a fork out of C calls that hold process-wide mutexes.

Connections must not be shared across ``fork``; comparing ``os.getpid()`` on every use costs a
system call on the hot path, so objects compare a counter that a fork handler increments.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from types import TracebackType

logger = logging.getLogger("celeriac.worker")

_generation = 0
_registered = False

#: s a fork waits for threads to leave their sections before it goes ahead anyway
FORK_WAIT = 10.0


def _forked() -> None:
    global _generation
    _generation += 1


def generation() -> int:
    """Changes in a child process after each ``fork``."""
    global _registered
    if not _registered:
        _registered = True
        if hasattr(os, "register_at_fork"):
            os.register_at_fork(after_in_child=_forked)
    return _generation


class ForkGuard:
    """Keeps ``fork`` out of C calls that take process-wide mutexes.

    SQLite takes global mutexes inside its calls (its memory allocator's, for one). A child
    forked while another thread of the parent is inside such a call inherits the mutex locked,
    and the child's first SQLite call waits for it forever: with one thread querying in a loop,
    half of 300 forks hung. Python cannot see those mutexes, so the calls say where they are:
    a thread runs them inside ``with fork_guard:``, and a fork waits until no other thread is
    inside one and lets none in until it is done.

    Only a process that forks while other threads run (the prefork supervisor) pays for this:
    it calls :meth:`arm` before starting them. Elsewhere (clients, the children themselves)
    entering a section is one attribute test.
    """

    def __init__(self) -> None:
        self.armed = False
        self._reset()

    def _reset(self) -> None:
        self._cond = threading.Condition(threading.Lock())
        self._inside = 0
        self._forking = False
        self._local = threading.local()

    def arm(self) -> None:
        """Make every later fork of this process wait for the sections to empty."""
        if self.armed:
            return
        self.armed = True
        if not getattr(self, "_hooked", False):
            self._hooked = True
            os.register_at_fork(
                before=self._before,
                after_in_parent=self._after_parent,
                after_in_child=self._reset_child,
            )

    def __enter__(self) -> None:
        if not self.armed:
            return
        local = self._local
        depth = getattr(local, "depth", 0)
        if depth == 0:  # nested sections count once, and never wait for a fork
            with self._cond:
                while self._forking:
                    self._cond.wait()
                self._inside += 1
        local.depth = depth + 1

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if not self.armed:
            return
        local = self._local
        depth = getattr(local, "depth", 0)
        if depth == 0:  # entered before the guard was armed
            return
        local.depth = depth - 1
        if depth == 1:
            with self._cond:
                self._inside -= 1
                if not self._inside:
                    self._cond.notify_all()

    # -- fork hooks ------------------------------------------------------------------------------
    def _before(self) -> None:
        if not self.armed:
            return
        mine = 1 if getattr(self._local, "depth", 0) else 0  # a fork from inside a section
        deadline = time.monotonic() + FORK_WAIT
        with self._cond:
            self._forking = True
            while self._inside > mine:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                self._cond.wait(remaining)
            late = self._inside - mine
        if late:
            logger.warning(
                "forking while %d thread(s) are still in a database call after %.0fs: the new "
                "child may hang on its first one",
                late,
                FORK_WAIT,
            )

    def _after_parent(self) -> None:
        if not self.armed:
            return
        with self._cond:
            self._forking = False
            self._cond.notify_all()

    def _reset_child(self) -> None:
        # The other threads did not come along: nothing is inside, and the child does not fork.
        self.armed = False
        self._reset()


#: the process's one guard
fork_guard = ForkGuard()
