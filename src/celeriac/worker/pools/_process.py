"""Small process helpers shared by the prefork pool and the prefork supervisor's children."""

from __future__ import annotations

import contextlib
import ctypes
import functools
import logging
import os
import select
import signal
import sys
import threading
import traceback
from collections.abc import Callable, Iterable
from typing import Any

logger = logging.getLogger("celeriac.worker")

_PR_SET_PDEATHSIG = 1
_PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


def die_with_parent(parent_pid: int) -> None:
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


def rss_bytes() -> int:
    """This process's resident memory (Linux /proc; 0 where unavailable)."""
    return rss_of("self")


def rss_of(pid: int | str) -> int:
    """Resident memory of process ``pid`` (Linux /proc; 0 where unavailable or gone)."""
    try:
        with open(f"/proc/{pid}/statm") as f:
            return int(f.read().split()[1]) * _PAGE
    except (OSError, ValueError, IndexError):
        return 0


class Forked:
    """A child forked to run ``target(*args)``: what the prefork supervisor needs of
    ``multiprocessing.Process``, without importing ``multiprocessing`` into every process.

    As ``multiprocessing`` does: the child's stdin is ``/dev/null``; it ends with ``os._exit``
    (no ``atexit`` handlers of the parent run there) after its non-daemon threads, with code 0,
    ``SystemExit``'s code, or 1 after printing an escaping exception; :attr:`sentinel` becomes
    readable when it ends; :attr:`exitcode` is ``-N`` for a child killed by signal ``N``.
    Log records made in the child carry ``name`` as their ``processName``.
    """

    def __init__(self, target: Callable[..., object], args: tuple[Any, ...], name: str) -> None:
        self.target, self.args, self.name = target, args, name
        self.pid = 0
        self.sentinel = -1
        self._code: int | None = None

    def start(self) -> None:
        _flush_streams()  # or the child would print the parent's buffered output again
        # The sentinel: a pidfd (Linux >= 5.3), readable once the child ended. Else a pipe whose
        # only write end the child holds, which also ends at the child's end, unless a process
        # the task forked (and left running) inherited it: then the child's death goes unseen.
        read, write = (-1, -1) if _pidfd_works() else os.pipe()
        try:
            pid = os.fork()
        except BaseException:  # EAGAIN, ENOMEM: no child, no pipe
            for fd in (read, write):
                if fd >= 0:
                    os.close(fd)
            raise
        if pid == 0:  # the child: never returns into the parent's code, whatever happens
            code = 1
            try:
                if read >= 0:
                    os.close(read)
                code = self._bootstrap()
            finally:
                os._exit(code)
        self.pid = pid
        if write < 0:
            try:
                self.sentinel = os.pidfd_open(pid)
            except OSError:  # out of file descriptors: a child nobody could watch must not run
                os.kill(pid, signal.SIGKILL)
                os.waitpid(pid, 0)
                raise
        else:
            os.close(write)
            self.sentinel = read

    def _bootstrap(self) -> int:
        code = 1
        try:
            _name_process(self.name)
            _stdin_to_devnull()
            self.target(*self.args)
            code = 0
        except SystemExit as exc:
            if exc.code is None or isinstance(exc.code, int):
                code = exc.code or 0
            else:
                _report(f"{exc.code}\n")
        except BaseException:
            _report(f"Process {self.name}:\n", traceback.format_exc())
        finally:
            _shutdown_threads()
            _flush_streams()
        return code

    @property
    def exitcode(self) -> int | None:
        """The child's exit code once it ended (reaping it), else None."""
        if self._code is None and self.pid:
            self._wait(os.WNOHANG)
        return self._code

    def join(self, timeout: float | None = None) -> None:
        """Wait up to ``timeout`` s (None: for ever) for the child to end, and reap it."""
        if self._code is not None or not self.pid:
            return
        if wait_ready([self.sentinel], timeout):
            self._wait(0)

    def is_alive(self) -> bool:
        return bool(self.pid) and self.exitcode is None

    def _wait(self, flags: int) -> None:
        try:
            pid, status = os.waitpid(self.pid, flags)
        except ChildProcessError:  # reaped elsewhere: nothing more to learn
            pid, status = self.pid, 255 << 8
        if pid == 0:
            return
        self._code = os.waitstatus_to_exitcode(status)
        if self.sentinel >= 0:
            os.close(self.sentinel)
            self.sentinel = -1


@functools.cache
def _pidfd_works() -> bool:
    """Whether this kernel gives process file descriptors (asked once)."""
    try:
        os.close(os.pidfd_open(os.getpid()))
    except (AttributeError, OSError):
        return False
    return True


def wait_ready(fds: Iterable[int], timeout: float | None) -> list[int]:
    """Those of ``fds`` readable (or closed) within ``timeout`` s (None: wait for one)."""
    poller = select.poll()
    wanted = [fd for fd in fds if fd >= 0]
    for fd in wanted:
        poller.register(fd, select.POLLIN)
    if not wanted and timeout is None:
        return []
    events = poller.poll(None if timeout is None else max(0, int(timeout * 1000)))
    return [fd for fd, _ in events]


def _name_process(name: str) -> None:
    # logging reads a record's processName from multiprocessing only when that is imported.
    previous = logging.getLogRecordFactory()

    def named(*args: Any, **kwargs: Any) -> logging.LogRecord:
        record = previous(*args, **kwargs)
        record.processName = name
        return record

    logging.setLogRecordFactory(named)
    # A task that asks multiprocessing for its process's name gets it too, if already imported.
    process = sys.modules.get("multiprocessing.process")
    if process is not None:
        process.current_process().name = name


def _stdin_to_devnull() -> None:
    with contextlib.suppress(AttributeError, OSError, ValueError):
        sys.stdin.close()
    with contextlib.suppress(OSError):
        sys.stdin = open(os.devnull)  # noqa: SIM115 - the process's stdin from now on


def _flush_streams() -> None:
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(AttributeError, ValueError, OSError):
            stream.flush()


def _report(*parts: str) -> None:
    # stderr may be closed (a worker started with 2>&-) or a pipe whose reader died: the child
    # still ends with its code.
    with contextlib.suppress(Exception):
        sys.stderr.write("".join(parts))


def _shutdown_threads() -> None:
    """What the interpreter's own exit does before it ends, which ``os._exit`` skips (and what
    ``multiprocessing`` does in its children): run the hooks that tell pools of threads to stop
    (``concurrent.futures`` registers one per executor), then join the non-daemon threads.
    Joining alone would wait for ever on an idle executor a task left behind."""
    shutdown = getattr(threading, "_shutdown", None)
    if shutdown is not None:
        shutdown()
        return
    current = threading.current_thread()
    for thread in threading.enumerate():
        if thread is not current and not thread.daemon and thread.is_alive():
            thread.join()
