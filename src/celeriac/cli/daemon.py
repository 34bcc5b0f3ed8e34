"""Running ``celeriac worker`` as a service: ``--pidfile``, ``--logfile`` and ``-D/--detach``.

The pidfile holds the worker's pid and a newline (Celery's format); it is created when the
worker starts and removed when it stops. A pidfile naming a live process refuses the start (two
workers with one pidfile would fight over it); one left by a process that died is replaced.
Detaching forks twice with a new session in between (the daemon is no session leader, so it
never gets a terminal), points stdin/stdout/stderr at ``/dev/null`` and keeps the working
directory, as ``celery worker --detach`` does; the command returns at once with status 0.
"""

from __future__ import annotations

import atexit
import contextlib
import errno
import logging
import os
import sys
from pathlib import Path

from celeriac.exceptions import ConfigurationError
from celeriac.urls import mask_log_handlers


class Pidfile:
    def __init__(self, path: str) -> None:
        self.path = Path(path).absolute()  # detaching keeps the directory; be explicit anyway
        self._owner: int | None = None

    def check(self) -> None:
        """Refuse a pidfile whose process still runs (before detaching: the error shows)."""
        pid = self._read()
        if pid is not None and pid != os.getpid() and _alive(pid):
            raise ConfigurationError(
                f"pidfile {self.path} names pid {pid}, which is running: is a worker already "
                "running with this pidfile?"
            )

    def write(self) -> None:
        """Write this process's pid (replacing a stale file) and remove it at exit."""
        self.check()
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()
        try:
            fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except OSError as exc:
            raise ConfigurationError(f"cannot create pidfile {self.path}: {exc}") from exc
        with os.fdopen(fd, "w") as f:
            f.write(f"{os.getpid()}\n")
        self._owner = os.getpid()
        atexit.register(self.remove)

    def remove(self) -> None:
        # Only the process that wrote it: a forked child that exits runs atexit hooks too.
        if self._owner != os.getpid():
            return
        if self._read() == self._owner:
            with contextlib.suppress(FileNotFoundError):
                self.path.unlink()
        self._owner = None

    def _read(self) -> int | None:
        try:
            text = self.path.read_text().strip()
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise ConfigurationError(f"cannot read pidfile {self.path}: {exc}") from exc
        try:
            return int(text)
        except ValueError:
            return None  # not ours (or half written by a process that died): replaced


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except OSError as exc:
        return exc.errno == errno.EPERM  # it exists, under another user
    return True


def detach() -> None:
    """Become a daemon: the calling process exits 0, a grandchild carries on."""
    if os.fork() > 0:
        os._exit(0)
    os.setsid()
    if os.fork() > 0:
        os._exit(0)
    os.umask(0o022)
    devnull = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1, 2):
        os.dup2(devnull, fd)
    os.close(devnull)


def setup_logging(level: str, fmt: str, logfile: str | None) -> None:
    """Log to ``logfile`` (appending) or stderr; the worker's banner shows at every level."""
    handler: logging.Handler
    if logfile:
        try:
            handler = logging.FileHandler(logfile, encoding="utf-8")
        except OSError as exc:
            raise ConfigurationError(f"cannot open logfile {logfile}: {exc}") from exc
    else:
        handler = logging.StreamHandler(sys.stderr)
    logging.basicConfig(level=level.upper(), format=fmt, handlers=[handler], force=True)
    mask_log_handlers()  # no password in a URL reaches the log
    # As Celery prints its banner whatever -l says (see celeriac.worker.banner).
    banner = logging.getLogger("celeriac.worker.banner")
    banner.setLevel(min(logging.INFO, logging.getLogger().level))
