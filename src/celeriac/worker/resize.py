"""How far ``pool_grow``/``pool_shrink`` may take a pool.

A prefork supervisor makes its shared memory (lease slots, deadlines, run-time settings) once,
before the first fork, so it needs an upper bound up front: ``worker_max_pool_size``, by default
four times the starting concurrency. A request beyond it, or below one process/thread, is
refused with a typed reply instead of being half done.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from celeriac.exceptions import Unsupported

if TYPE_CHECKING:
    from celeriac.worker.worker import Worker

#: The default maximum, as a multiple of the starting concurrency.
GROWTH = 4


def max_pool_size(conf: Any, concurrency: int) -> int:
    """The most processes or threads the pool may grow to (``worker_max_pool_size``)."""
    configured = conf.worker_max_pool_size
    return max(concurrency, int(configured) if configured else GROWTH * concurrency)


def pool_capacity(worker: Worker) -> int:
    """The most ``worker``'s pool may grow to: :func:`max_pool_size`, and at least
    ``--autoscale``'s MAX."""
    most = max_pool_size(worker.app.conf, worker.concurrency)
    return max(most, worker.autoscale.max) if worker.autoscale is not None else most


def resized(hostname: str, size: int, delta: int, maximum: int) -> int:
    """``size`` changed by ``delta``, or :class:`Unsupported` when that leaves 1..``maximum``."""
    new = size + delta
    if new > maximum:
        raise Unsupported(
            f"pool_grow: {hostname} runs {size} and may grow to {maximum} at most "
            "(worker_max_pool_size)"
        )
    if new < 1:
        raise Unsupported(f"pool_shrink: {hostname} runs {size}; a pool keeps at least 1")
    return new
