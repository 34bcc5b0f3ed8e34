"""Outcomes of running a task: the result document to store, what to publish next, and how to
acknowledge. Pure functions of the request and what the task did; no broker I/O.
"""

from __future__ import annotations

import datetime as dt
import logging
import time
import traceback as tb_mod
from typing import TYPE_CHECKING, Any

from celeriac import signals, states
from celeriac.canvas.plan import Plan, plan_signature
from celeriac.canvas.signature import Signature
from celeriac.exceptions import Retry, TaskRevokedError, TimeLimitExceeded, WorkerLostError
from celeriac.keyring import result_keyring_of
from celeriac.protocol.message import TaskHeaders
from celeriac.protocol.results import make_meta
from celeriac.protocol.signing import sign_encoded
from celeriac.tasks.context import Request
from celeriac.worker.errbacks import run_errbacks
from celeriac.worker.job import Action, Job, Outcome
from celeriac.worker.result_size import oversize

if TYPE_CHECKING:
    from celeriac.app import Celeriac
    from celeriac.tasks.task import Task

logger = logging.getLogger("celeriac.worker")


def result_meta(
    app: Celeriac,
    headers: TaskHeaders | None,
    task_id: str,
    state: str,
    result: Any,
    tb: str | None = None,
    request: Request | None = None,
    children: list[Any] | None = None,
) -> bytes:
    extended = None
    if app.conf.result_extended and request is not None:
        extended = {
            "name": request.task,
            "args": request.args,
            "kwargs": request.kwargs,
            "worker": request.hostname,
            "retries": request.retries,
            "queue": request.delivery_info.get("routing_key"),
        }
    meta = make_meta(
        task_id,
        state,
        result,
        traceback=tb,
        children=children,
        group_id=headers.group if headers else (request.group if request else None),
        parent_id=headers.parent_id if headers else (request.parent_id if request else None),
        extended=extended,
    )
    serializer = app.serializers.get(app.conf.result_serializer)
    data = serializer.dumps(meta)
    too_large = oversize(app, task_id, state, len(data))
    if too_large is not None:
        if state == states.SUCCESS:
            raise too_large  # success_outcome stores it as the task's failure
        # Any other state keeps its name; the error replaces what did not fit.
        small = make_meta(task_id, state, too_large, group_id=meta.get("group_id"))
        data = serializer.dumps(small)
    keyring = result_keyring_of(app.conf)
    return data if keyring is None else sign_encoded(data, serializer, keyring)


def refuse(
    app: Celeriac,
    job_id: int,
    headers: TaskHeaders | None,
    task_id: str | None,
    exc: BaseException,
    *,
    dead_letter: bool = True,
) -> Outcome:
    """A message problem: store FAILURE where we know the id, and dead-letter the message."""
    reason = f"{type(exc).__name__}: {exc}"
    meta = result_meta(app, headers, task_id, states.FAILURE, exc) if task_id else None
    return Outcome(
        job_id,
        task_id,
        headers.task if headers else None,
        state=states.FAILURE if task_id else None,
        meta=meta,
        action=Action.DEAD_LETTER if dead_letter else Action.ACK,
        reason=reason,
        summary=reason,
        error=exc,
        event=("task-failed", {"exception": repr(exc), "traceback": ""}) if task_id else None,
    )


def _ignore_result(app: Celeriac, task: Task[Any, Any], request: Request) -> bool:
    return bool(
        request.ignore_result
        or task.ignore_result
        or (task.ignore_result is None and app.conf.task_ignore_result)
    )


def success_outcome(
    app: Celeriac, task: Task[Any, Any], request: Request, job_id: int, value: Any
) -> Outcome:
    assert request.id is not None
    plan = Plan()
    for cb in request.callbacks or []:
        _follow(app, plan, cb, [value], request)
    if request.chain:
        rest = list(request.chain)
        nxt = rest.pop()
        _follow(app, plan, nxt, [value], request, chain=[dict(s) for s in rest] or None)
    followups = plan.publishes
    children = [[[f.message.task_id, None], None] for f in followups]
    chord = _chord_part(request)
    try:
        # An eager caller gets its result whatever ignore_result says, as in Celery.
        store = chord is not None or request.is_eager or not _ignore_result(app, task, request)
        meta = (
            result_meta(
                app, None, request.id, states.SUCCESS, value, request=request, children=children
            )
            if store
            else None
        )
    except Exception as exc:
        return failure_outcome(app, task, request, job_id, exc)
    signals.task_success.send(task, result=value)
    summary = _short(value)
    return Outcome(
        job_id,
        request.id,
        task.name,
        states.SUCCESS if meta else None,
        meta,
        followups=followups,
        summary=summary,
        chord_starts=plan.chord_starts,
        chord=chord,
        event=("task-succeeded", {"result": summary}),
    )


def _chord_part(request: Request) -> tuple[str, int, dict[str, Any]] | None:
    if request.chord and request.group is not None:
        return request.group, int(request.group_index or 0), request.chord
    return None


def failure_outcome(
    app: Celeriac, task: Task[Any, Any], request: Request, job_id: int, exc: BaseException
) -> Outcome:
    assert request.id is not None
    tb = "".join(tb_mod.format_exception(type(exc), exc, exc.__traceback__))
    plan = Plan()
    run_errbacks(
        app,
        request.errbacks,
        request,
        exc,
        exc.__traceback__,
        lambda sig: _follow(app, plan, sig, [request.id], request),
    )
    chord = _chord_part(request)
    store = (
        chord is not None
        or request.is_eager
        or not _ignore_result(app, task, request)
        or app.conf.task_store_errors_even_if_ignored
    )
    meta = result_meta(app, None, request.id, states.FAILURE, exc, tb, request) if store else None
    # The chain stops here; its later steps fail with the same error, so that waiting on the
    # chain's result raises instead of waiting forever (Celery does the same).
    extra = []
    for step in request.chain or []:
        step_id = (step.get("options") or {}).get("task_id")
        if step_id:
            extra.append(
                (step_id, states.FAILURE, result_meta(app, None, step_id, states.FAILURE, exc))
            )
    signals.task_failure.send(
        task,
        task_id=request.id,
        exception=exc,
        args=request.args,
        kwargs=request.kwargs,
        traceback=exc.__traceback__,
        einfo=tb,
    )
    return Outcome(
        job_id,
        request.id,
        task.name,
        states.FAILURE if meta else None,
        meta,
        followups=plan.publishes,
        summary=f"{type(exc).__name__}: {exc}",
        extra_results=extra,
        chord_starts=plan.chord_starts,
        chord=chord,
        error=exc,
        event=("task-failed", {"exception": repr(exc), "traceback": tb}),
    )


def retry_outcome(
    app: Celeriac, task: Task[Any, Any], request: Request, job_id: int, retry: Retry
) -> Outcome:
    assert request.id is not None
    eta = retry.eta if retry.eta is not None else time.time() + float(retry.when or 0)
    args = list(retry.new_args) if retry.new_args is not None else request.args
    kwargs = dict(retry.new_kwargs) if retry.new_kwargs is not None else request.kwargs
    options: dict[str, Any] = {
        "queue": request.delivery_info.get("routing_key"),
        "priority": request.delivery_info.get("priority"),
        "time_limit": request.timelimit[0],
        "soft_time_limit": request.timelimit[1],
        "expires": _absolute(request.expires),
        "reply_to": request.reply_to,
        **retry.options,  # what the task asked for in self.retry(...) wins
    }
    publication = app.prepare_message(
        task.name,
        args,
        kwargs,
        task_id=request.id,
        retries=request.retries + 1,
        eta=eta,
        root_id=request.root_id,
        parent_id=request.id,
        group_id=request.group,
        group_index=request.group_index,
        link=request.callbacks,
        link_error=request.errbacks,
        chain=request.chain,
        chord=request.chord,
        _task=task,
        **options,
    )
    reason = retry.exc if retry.exc is not None else retry
    meta = result_meta(app, None, request.id, states.RETRY, reason, None, request)
    signals.task_retry.send(task, request=request, reason=reason, einfo=None)
    return Outcome(
        job_id,
        request.id,
        task.name,
        states.RETRY,
        meta,
        followups=[publication],
        summary=f"retry {request.retries + 1} in {max(0.0, eta - time.time()):.2f}s",
        event=("task-retried", {"exception": repr(reason), "traceback": _traceback(reason)}),
    )


def _absolute(ts: float | None) -> dt.datetime | None:
    return None if ts is None else dt.datetime.fromtimestamp(ts, dt.timezone.utc)


def _follow(
    app: Celeriac,
    plan: Plan,
    sig: dict[str, Any],
    args: list[Any],
    request: Request,
    *,
    chain: list[dict[str, Any]] | None = None,
) -> None:
    """Plan a callback, errback or the next chain step (a task or a whole workflow)."""
    options: dict[str, Any] = {
        "parent_id": request.id,
        "root_id": request.root_id,
        "reply_to": request.reply_to,
    }
    if chain:
        options["chain"] = chain
    plan_signature(app, Signature.from_dict(sig, app), args, {}, options, plan)


def _traceback(exc: BaseException) -> str:
    if exc.__traceback__ is None:
        return ""
    return "".join(tb_mod.format_exception(type(exc), exc, exc.__traceback__))


def _short(value: Any, limit: int = 200) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def worker_lost(app: Celeriac, job: Job, detail: str) -> Outcome:
    """The process running ``job`` died: requeue it (it counts as a delivery) or fail it."""
    if app.conf.task_reject_on_worker_lost:
        return Outcome(
            job.job_id,
            job.headers.id,
            job.headers.task,
            action=Action.REQUEUE,
            reason=detail,
            summary=f"worker lost ({detail}); requeued",
        )
    exc = WorkerLostError(detail)
    meta = result_meta(app, job.headers, job.headers.id, states.FAILURE, exc)
    return Outcome(
        job.job_id,
        job.headers.id,
        job.headers.task,
        states.FAILURE,
        meta,
        summary=f"WorkerLostError: {detail}",
    )


def revoked(app: Celeriac, job: Job, *, terminated: bool, store: bool = False) -> Outcome:
    """A revoked job that was not run, or was stopped while running.

    A job revoked before it started stores nothing (its REVOKED state is what said so) unless
    ``store``: revoked by a broadcast, which may have stored nothing.
    """
    task = app.tasks.get(job.headers.task)
    signals.task_revoked.send(
        task, request=job.headers, terminated=terminated, signum=None, expired=False
    )
    meta = None
    if terminated or store:
        exc = TaskRevokedError("terminated" if terminated else "revoked")
        meta = result_meta(app, job.headers, job.headers.id, states.REVOKED, exc)
    return Outcome(
        job.job_id,
        job.headers.id,
        job.headers.task,
        states.REVOKED if meta else None,
        meta,
        summary="terminated" if terminated else "revoked before it started",
        event=("task-revoked", {"terminated": terminated, "signum": None, "expired": False}),
    )


def hard_time_limit(app: Celeriac, job: Job, seconds: float) -> Outcome:
    """The job ran past its hard time limit and its process was killed."""
    exc = TimeLimitExceeded(f"time limit ({seconds}s) exceeded; the process was killed")
    meta = result_meta(app, job.headers, job.headers.id, states.FAILURE, exc)
    task = app.tasks.get(job.headers.task)
    signals.task_failure.send(
        task,
        task_id=job.headers.id,
        exception=exc,
        args=None,
        kwargs=None,
        traceback=None,
        einfo=None,
    )
    # Acknowledged like any failure (Celery's task_acks_on_failure_or_timeout); when that is
    # off, set aside for a person rather than run again and be killed again.
    action = Action.ACK if app.conf.task_acks_on_failure_or_timeout else Action.DEAD_LETTER
    return Outcome(
        job.job_id,
        job.headers.id,
        job.headers.task,
        states.FAILURE,
        meta,
        action=action,
        reason=str(exc),
        summary=f"TimeLimitExceeded: {exc}",
        event=("task-failed", {"exception": repr(exc), "traceback": ""}),
    )
