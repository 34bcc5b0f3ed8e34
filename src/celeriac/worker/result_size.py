"""The bound on a stored result: ``result_max_size``, and the result backend's own item limit
(:attr:`~celeriac.backends.base.ResultBackend.max_item_size`) when it is lower.

A result over it is never sent to the store (where it would fail, or fill the server): the task
is stored as a FAILURE raising :class:`~celeriac.exceptions.ResultTooLarge` instead.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from celeriac.exceptions import ResultTooLarge

if TYPE_CHECKING:
    from celeriac.app import Celeriac


def result_size_limit(app: Celeriac) -> tuple[int, str] | None:
    """``(bytes, what sets it)`` for the tightest limit in force, None when there is none."""
    limits: list[tuple[int, str]] = []
    configured = app.conf.result_max_size
    if configured:
        limits.append((int(configured), f"result_max_size={configured}"))
    own = app.backend.max_item_size
    if own:
        scheme = app.backend.url.partition("://")[0]
        limits.append((own, f"the {scheme}:// backend's item limit ({own})"))
    return min(limits) if limits else None


def oversize(app: Celeriac, task_id: str, state: str, size: int) -> ResultTooLarge | None:
    """The error to store instead of a ``state`` document of ``size`` bytes, if it is too big."""
    limit = result_size_limit(app)
    if limit is None or size <= limit[0]:
        return None
    return ResultTooLarge(
        f"the {state} result of task {task_id} encodes to {size} bytes, over {limit[1]}"
    )
