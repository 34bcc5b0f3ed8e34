"""Running one task request: gate checks, the call, the outcome to store and acknowledge.

:func:`precheck` runs in the consumer (it needs only the headers and the result backend);
:func:`execute` runs wherever the pool runs tasks (a child process, a thread). Neither does broker
I/O: they return an :class:`Outcome` that the consumer applies (publish follow-ups, store the
result, then acknowledge), so ordering and batching stay in one place.
"""

from __future__ import annotations

import asyncio
import logging
import time
import traceback as tb_mod
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from celeriac import states
from celeriac.exceptions import (
    CeleriacError,
    Ignore,
    NotRegistered,
    ProtocolError,
    Reject,
    Retry,
    TaskRevokedError,
    WorkerLostError,
)
from celeriac.protocol.message import Message, TaskHeaders, decode_body, read_headers
from celeriac.protocol.results import make_meta
from celeriac.tasks.context import Request, reset_request, set_request

if TYPE_CHECKING:
    from celeriac.app import Celeriac
    from celeriac.brokers.base import Delivery
    from celeriac.tasks.task import Task

logger = logging.getLogger("celeriac.worker")

ACK, DEAD_LETTER, REQUEUE = "ack", "dead_letter", "requeue"


@dataclass(slots=True)
class Job:
    """One task for a pool; picklable, so it can cross to a child process."""

    job_id: int
    message: Message
    headers: TaskHeaders
    queue: str
    delivery_count: int
    hostname: str


@dataclass(slots=True)
class Followup:
    """A message to publish before the outcome is acknowledged (a retry, a callback)."""

    message: Message
    queue: str
    priority: int = 0
    eta: float | None = None


@dataclass(slots=True)
class Outcome:
    """What became of a job, for the consumer to apply."""

    job_id: int
    task_id: str | None
    task_name: str | None = None
    state: str | None = None
    meta: bytes | None = None
    action: str = ACK
    reason: str = ""
    delay_until: float | None = None
    followups: list[Followup] = field(default_factory=list)
    runtime: float = 0.0
    summary: str = ""


def accepted(app: Celeriac) -> frozenset[str]:
    return app.serializers.content_types(app.conf.accept_content)


def _meta(
    app: Celeriac,
    headers: TaskHeaders | None,
    task_id: str,
    state: str,
    result: Any,
    tb: str | None = None,
    request: Request | None = None,
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
        group_id=headers.group if headers else None,
        parent_id=headers.parent_id if headers else None,
        extended=extended,
    )
    return app.serializers.get(app.conf.result_serializer).dumps(meta)


def _refuse(
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
    meta = _meta(app, headers, task_id, states.FAILURE, exc) if task_id else None
    return Outcome(
        job_id,
        task_id,
        headers.task if headers else None,
        state=states.FAILURE if task_id else None,
        meta=meta,
        action=DEAD_LETTER if dead_letter else ACK,
        reason=reason,
        summary=reason,
    )


def precheck(
    app: Celeriac, job_id: int, delivery: Delivery
) -> tuple[TaskHeaders | None, Outcome | None]:
    """Checks done before a message reaches the pool; an Outcome means: do not run it."""
    message = delivery.message
    try:
        headers = read_headers(message, app.serializers, accepted(app))
    except ProtocolError as exc:
        return None, _refuse(app, job_id, None, message.task_id, exc)
    if app.tasks.get(headers.task) is None:
        missing = NotRegistered(app.tasks.missing_message(headers.task))
        return headers, _refuse(app, job_id, headers, headers.id, missing)
    now = time.time()
    if headers.expires is not None and headers.expires < now:
        exc2 = TaskRevokedError("expired")
        meta = _meta(app, headers, headers.id, states.REVOKED, exc2)
        return headers, Outcome(
            job_id,
            headers.id,
            headers.task,
            states.REVOKED,
            meta,
            summary="expired before it started",
        )
    if headers.eta is not None and headers.eta > now + 0.01:
        # A producer that put the ETA only in the header (a Celery client on a shared queue):
        # hand it back to the broker to hold, rather than holding it in worker memory.
        return headers, Outcome(
            job_id, headers.id, headers.task, action=REQUEUE, delay_until=headers.eta, reason="eta"
        )
    limit = app.conf.worker_max_deliveries
    if limit and delivery.delivery_count > limit:
        exc3 = WorkerLostError(
            f"delivered {delivery.delivery_count - 1} times without being acknowledged: its "
            f"worker was lost each time (worker_max_deliveries={limit})"
        )
        return headers, _refuse(app, job_id, headers, headers.id, exc3)
    if delivery.redelivered and app.result_backend_url():
        # Cheap insurance: a redelivered message whose result already says SUCCESS ran to the
        # end before its ack was lost; running it again would only duplicate side effects.
        try:
            if app.backend.get_meta(headers.id).get("status") == states.SUCCESS:
                return headers, Outcome(
                    job_id,
                    headers.id,
                    headers.task,
                    summary="already succeeded; acknowledged without running",
                )
        except CeleriacError:
            logger.warning("could not read the result of redelivered task %s", headers.id)
    return headers, None


def execute(app: Celeriac, job: Job) -> Outcome:
    """Run one job and say what to store and how to acknowledge. Never raises."""
    headers = job.headers
    started = time.perf_counter()
    task = app.tasks.get(headers.task)
    if task is None:
        return _refuse(
            app,
            job.job_id,
            headers,
            headers.id,
            NotRegistered(app.tasks.missing_message(headers.task)),
        )
    try:
        args, kwargs, embed = decode_body(job.message, headers, app.serializers, accepted(app))
        task.check_arguments(args, kwargs)
    except (ProtocolError, TypeError) as exc:
        return _refuse(app, job.job_id, headers, headers.id, exc)
    request = Request(
        id=headers.id,
        task=headers.task,
        args=args,
        kwargs=kwargs,
        retries=headers.retries,
        eta=headers.eta,
        expires=headers.expires,
        hostname=job.hostname,
        delivery_info={
            "exchange": "",
            "routing_key": job.queue,
            "priority": job.message.properties.get("priority"),
            "redelivered": job.delivery_count > 1,
        },
        delivery_count=job.delivery_count,
        root_id=headers.root_id or headers.id,
        parent_id=headers.parent_id,
        group=headers.group,
        group_index=headers.group_index,
        origin=headers.origin,
        reply_to=job.message.properties.get("reply_to"),
        timelimit=(headers.time_limit, headers.soft_time_limit),
        callbacks=embed.get("callbacks"),
        errbacks=embed.get("errbacks"),
        chain=embed.get("chain"),
        chord=embed.get("chord"),
        headers=job.message.headers,
        ignore_result=headers.ignore_result,
    )
    outcome = run_request(app, task, request, job.job_id)
    outcome.runtime = time.perf_counter() - started
    return outcome


def call_task(task: Task[Any, Any], args: list[Any], kwargs: dict[str, Any]) -> Any:
    if task.is_coroutine:
        return asyncio.run(task(*args, **kwargs))
    return task(*args, **kwargs)


def run_request(app: Celeriac, task: Task[Any, Any], request: Request, job_id: int) -> Outcome:
    token = set_request(request)
    try:
        try:
            value = call_task(task, request.args, request.kwargs)
        finally:
            reset_request(token)
    except Retry as retry:
        return _retry_outcome(app, task, request, job_id, retry)
    except Reject as rej:
        action = REQUEUE if rej.requeue else DEAD_LETTER
        return Outcome(
            job_id,
            request.id,
            task.name,
            action=action,
            reason=f"rejected by task: {rej.reason}",
            summary="rejected",
        )
    except Ignore:
        return Outcome(job_id, request.id, task.name, summary="ignored")
    except (Exception, SystemExit) as exc:
        if _should_autoretry(task, exc):
            limit = task.effective_max_retries()
            if limit is None or request.retries < limit:
                auto = Retry(exc=exc, when=task.autoretry_countdown(request.retries))
                return _retry_outcome(app, task, request, job_id, auto)
        return _failure_outcome(app, task, request, job_id, exc)
    return _success_outcome(app, task, request, job_id, value)


def _should_autoretry(task: Task[Any, Any], exc: BaseException) -> bool:
    if not task.autoretry_for or not isinstance(exc, tuple(task.autoretry_for)):
        return False
    return not (task.dont_autoretry_for and isinstance(exc, tuple(task.dont_autoretry_for)))


def _ignore_result(app: Celeriac, task: Task[Any, Any], request: Request) -> bool:
    return bool(
        request.ignore_result
        or task.ignore_result
        or (task.ignore_result is None and app.conf.task_ignore_result)
    )


def _success_outcome(
    app: Celeriac, task: Task[Any, Any], request: Request, job_id: int, value: Any
) -> Outcome:
    assert request.id is not None
    followups: list[Followup] = []
    for cb in request.callbacks or []:
        followups.append(_followup(app, cb, value, request))
    if request.chain:
        rest = list(request.chain)
        nxt = rest.pop()
        followups.append(_followup(app, nxt, value, request, chain=rest or None))
    try:
        meta = (
            None
            if _ignore_result(app, task, request)
            else _meta(app, None, request.id, states.SUCCESS, value, request=request)
        )
    except Exception as exc:
        return _failure_outcome(app, task, request, job_id, exc)
    return Outcome(
        job_id,
        request.id,
        task.name,
        states.SUCCESS if meta else None,
        meta,
        followups=followups,
        summary=_short(value),
    )


def _failure_outcome(
    app: Celeriac, task: Task[Any, Any], request: Request, job_id: int, exc: BaseException
) -> Outcome:
    assert request.id is not None
    tb = "".join(tb_mod.format_exception(type(exc), exc, exc.__traceback__))
    followups = [_followup(app, eb, None, request, errback=True) for eb in request.errbacks or []]
    store = not _ignore_result(app, task, request) or app.conf.task_store_errors_even_if_ignored
    meta = _meta(app, None, request.id, states.FAILURE, exc, tb, request) if store else None
    return Outcome(
        job_id,
        request.id,
        task.name,
        states.FAILURE if meta else None,
        meta,
        followups=followups,
        summary=f"{type(exc).__name__}: {exc}",
    )


def _retry_outcome(
    app: Celeriac, task: Task[Any, Any], request: Request, job_id: int, retry: Retry
) -> Outcome:
    assert request.id is not None
    eta = retry.eta if retry.eta is not None else time.time() + float(retry.when or 0)
    args = list(retry.new_args) if retry.new_args is not None else request.args
    kwargs = dict(retry.new_kwargs) if retry.new_kwargs is not None else request.kwargs
    message, queue, priority, eta_ts = app.prepare_message(
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
        queue=request.delivery_info.get("routing_key"),
        link=request.callbacks,
        link_error=request.errbacks,
        chain=request.chain,
        chord=request.chord,
        expires=request.expires,
        _task=task,
        **retry.options,
    )
    reason = retry.exc if retry.exc is not None else retry
    meta = _meta(app, None, request.id, states.RETRY, reason, None, request)
    return Outcome(
        job_id,
        request.id,
        task.name,
        states.RETRY,
        meta,
        followups=[Followup(message, queue, priority, eta_ts)],
        summary=f"retry {request.retries + 1} in {max(0.0, eta - time.time()):.2f}s",
    )


def _followup(
    app: Celeriac,
    sig: dict[str, Any],
    value: Any,
    request: Request,
    *,
    chain: list[dict[str, Any]] | None = None,
    errback: bool = False,
) -> Followup:
    args = list(sig.get("args") or [])
    if not sig.get("immutable"):
        args = ([request.id, *args]) if errback else ([value, *args])
    opts = dict(sig.get("options") or {})
    for key in ("link", "link_error"):
        opts.pop(key, None)
    message, queue, priority, eta = app.prepare_message(
        str(sig["task"]),
        args,
        dict(sig.get("kwargs") or {}),
        chain=chain,
        parent_id=request.id,
        root_id=request.root_id,
        link=(sig.get("options") or {}).get("link"),
        link_error=(sig.get("options") or {}).get("link_error"),
        **{k: v for k, v in opts.items() if k in _SIG_OPTIONS},
    )
    return Followup(message, queue, priority, eta)


_SIG_OPTIONS = frozenset(
    {
        "task_id",
        "queue",
        "priority",
        "countdown",
        "eta",
        "expires",
        "headers",
        "serializer",
        "time_limit",
        "soft_time_limit",
        "group_id",
        "group_index",
        "ignore_result",
        "shadow",
    }
)


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
            action=REQUEUE,
            reason=detail,
            summary=f"worker lost ({detail}); requeued",
        )
    exc = WorkerLostError(detail)
    meta = _meta(app, job.headers, job.headers.id, states.FAILURE, exc)
    return Outcome(
        job.job_id,
        job.headers.id,
        job.headers.task,
        states.FAILURE,
        meta,
        summary=f"WorkerLostError: {detail}",
    )
