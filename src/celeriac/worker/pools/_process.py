"""Small process helpers shared by the prefork pool and the prefork supervisor's children."""

from __future__ import annotations

import ctypes
import logging
import os
import signal
import sys

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
