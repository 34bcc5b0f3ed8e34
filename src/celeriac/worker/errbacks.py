"""Errbacks (``link_error``) in either of Celery's two forms.

Celery decides by the errback task's parameters (``_call_task_errbacks`` in its result
backend): a task registered in this worker whose function takes more than one positional
parameter (or ``*args``), and is not bound (``bind=True``), is called *here, now*, with the
failed task's request, the exception and the traceback: ``on_error(request, exc, traceback)``.
Any other errback (``on_error(task_id)``, a task this worker does not have, a workflow) is
sent as a task with the failed task's id first, the older form. Doing the same keeps a Celery
project's errbacks working unchanged whichever worker, Celery's or ours, runs the failed task.
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Callable
from types import TracebackType
from typing import TYPE_CHECKING, Any

from celeriac.canvas.signature import Signature, chain, chord, group
from celeriac.tasks.context import Request

if TYPE_CHECKING:
    from celeriac.app import Celeriac
    from celeriac.tasks.task import Task

logger = logging.getLogger("celeriac.worker")


def takes_request(task: Task[Any, Any]) -> bool:
    """Is ``task`` an errback of the ``(request, exc, traceback)`` form (Celery's test)?"""
    if task.bind:  # Celery sees a bound task's parameters through a partial: the older form
        return False
    try:
        spec = inspect.getfullargspec(task.fun)
    except TypeError:
        return False
    return bool(spec.varargs) or len(spec.args) > 1


def run_errbacks(
    app: Celeriac,
    errbacks: list[dict[str, Any]] | None,
    request: Request,
    exc: BaseException,
    tb: TracebackType | None,
    send: Callable[[Signature], None],
) -> None:
    """Call the errbacks of the new form here; hand the others to ``send`` (the old form)."""
    for data in errbacks or []:
        sig = Signature.from_dict(data, app)
        task = None if isinstance(sig, chain | group | chord) else app.tasks.get(sig.name)
        if task is None or not takes_request(task):
            send(sig)
            continue
        try:
            sig(request, exc, tb)
        except Exception:
            # Celery turns this into an internal error of the failed task; its failure is
            # already decided and stored here, so the errback's own error is logged instead.
            logger.exception("errback %s of %s[%s] raised", sig.name, request.task, request.id)
