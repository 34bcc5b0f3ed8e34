"""Running a task in the calling process: ``task.apply()`` and ``task_always_eager``."""

from __future__ import annotations

import traceback as tb_mod
from typing import TYPE_CHECKING, Any

from celeriac import states
from celeriac.exceptions import Retry
from celeriac.protocol.message import new_id
from celeriac.protocol.results import make_meta
from celeriac.result import EagerResult
from celeriac.tasks.context import Request, reset_request, set_request
from celeriac.worker.executor import call_task

if TYPE_CHECKING:
    from celeriac.tasks.task import Task


def run_eagerly(
    task: Task[Any, Any],
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    *,
    task_id: str | None,
    retries: int = 0,
    throw: bool | None = None,
) -> EagerResult[Any]:
    """Run ``task`` here; retries run again at once, up to the task's max_retries."""
    task_id = task_id or new_id()
    propagate = task.app.conf.task_eager_propagates if throw is None else throw
    task.check_arguments(args, kwargs)
    while True:
        request = Request(
            id=task_id,
            task=task.name,
            args=list(args),
            kwargs=kwargs,
            retries=retries,
            is_eager=True,
            root_id=task_id,
        )
        token = set_request(request)
        try:
            value = call_task(task, list(args), kwargs)
        except Retry as retry:
            limit = task.effective_max_retries()
            if limit is not None and retries >= limit:
                exc = retry.exc or retry
                return _failed(task_id, exc, propagate)
            if retry.new_args is not None:
                args = tuple(retry.new_args)
            if retry.new_kwargs is not None:
                kwargs = dict(retry.new_kwargs)
            retries += 1
            continue
        except Exception as exc:
            if task.autoretry_for and isinstance(exc, tuple(task.autoretry_for)):
                limit = task.effective_max_retries()
                if limit is None or retries < limit:
                    retries += 1
                    continue
            return _failed(task_id, exc, propagate)
        finally:
            reset_request(token)
        return EagerResult(task_id, make_meta(task_id, states.SUCCESS, value))


def _failed(task_id: str, exc: BaseException, propagate: bool) -> EagerResult[Any]:
    if propagate:
        raise exc
    tb = "".join(tb_mod.format_exception(type(exc), exc, exc.__traceback__))
    return EagerResult(task_id, make_meta(task_id, states.FAILURE, exc, traceback=tb), exc)
