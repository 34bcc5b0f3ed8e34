"""A cheap "was this process forked since?" check.

Connections must not be shared across ``fork``; comparing ``os.getpid()`` on every use costs a
system call on the hot path, so objects compare a counter that a fork handler increments.
"""

from __future__ import annotations

import os

_generation = 0
_registered = False


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
