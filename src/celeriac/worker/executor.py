"""Running one task request: gate checks, the call, the outcome to store and acknowledge.

:func:`precheck` runs in the consumer (it needs only the headers and the result backend);
:func:`execute` runs wherever the pool runs tasks (a child process, a thread). Neither does broker
I/O: they return an :class:`Outcome` that the consumer applies (publish follow-ups, store the
result, then acknowledge), so ordering and batching stay in one place.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Awaitable, Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from celeriac import signals, states, tracing
from celeriac.exceptions import (
    Ignore,
    NotRegistered,
    ProtocolError,
    Reject,
    Retry,
    SoftTimeLimitExceeded,
    TaskRevokedError,
    TimeLimitExceeded,
    WorkerLostError,
)
from celeriac.protocol.bounds import check_raw_size
from celeriac.protocol.message import TaskHeaders, decode_body, read_headers
from celeriac.tasks.context import Request, reset_request, set_request
from celeriac.worker.job import Action, Job, Outcome, accepted
from celeriac.worker.limits import nullcontext_factory
from celeriac.worker.outcomes import (
    failure_outcome,
    hard_time_limit,
    refuse,
    result_meta,
    retry_outcome,
    revoked,
    success_outcome,
    worker_lost,
)
from celeriac.worker.signatures import check_signature

if TYPE_CHECKING:
    from celeriac.app import Celeriac
    from celeriac.brokers.base import Delivery
    from celeriac.tasks.task import Task

logger = logging.getLogger("celeriac.worker")

__all__ = [  # Job and Outcome live in worker.job; re-exported for callers that import them here
    "Job",
    "Outcome",
    "execute",
    "execute_async",
    "finish",
    "hard_time_limit",
    "precheck",
    "prepare",
    "revoked",
    "time_limits",
    "worker_lost",
]


#: ``stored_state`` of a task whose state the lookup could not read (the backend failed).
STATE_UNREAD = "?"
#: s a redelivered message whose state could not be read waits before it is looked at again.
UNREAD_PAUSE = 1.0


def precheck(
    app: Celeriac, job_id: int, delivery: Delivery, stored_state: str | None = None
) -> tuple[TaskHeaders | None, Outcome | None]:
    """Checks done before a message reaches the pool; an Outcome means: do not run it.

    ``stored_state`` is the task's state in the result backend, looked up for the whole fetched
    batch at once: REVOKED means it must not run; :data:`STATE_UNREAD` that it is not known.
    """
    message = delivery.message
    unsigned = check_signature(app, job_id, message)
    if unsigned is not None:
        return None, unsigned
    try:
        # Before anything reads the body (a v1 message's headers are in it): see protocol/bounds.
        check_raw_size(message.size, app.conf.broker_max_message_size)
        headers = read_headers(message, app.serializers, accepted(app))
    except ProtocolError as exc:
        return None, refuse(app, job_id, None, message.task_id, exc)
    if app.tasks.get(headers.task) is None:
        missing = NotRegistered(app.tasks.missing_message(headers.task))
        return headers, refuse(app, job_id, headers, headers.id, missing)
    now = time.time()
    if headers.expires is not None and headers.expires < now:
        exc2 = TaskRevokedError("expired")
        meta = result_meta(app, headers, headers.id, states.REVOKED, exc2)
        return headers, Outcome(
            job_id,
            headers.id,
            headers.task,
            states.REVOKED,
            meta,
            summary="expired before it started",
            event=("task-revoked", {"terminated": False, "signum": None, "expired": True}),
        )
    if headers.eta is not None and headers.eta > now + 0.01:
        # A producer that put the ETA only in the header (a Celery client on a shared queue):
        # hand it back to the broker to hold, rather than holding it in worker memory.
        return headers, Outcome(
            job_id, headers.id, headers.task, action=Action.DELAY, delay_until=headers.eta
        )
    limit = app.conf.worker_max_deliveries
    if limit and delivery.delivery_count > limit:
        exc3 = WorkerLostError(
            f"delivered {delivery.delivery_count - 1} times without being acknowledged: its "
            f"worker was lost each time (worker_max_deliveries={limit})"
        )
        return headers, refuse(app, job_id, headers, headers.id, exc3)
    if stored_state == states.REVOKED:
        job = Job(job_id, message, headers, delivery.queue, delivery.delivery_count, "")
        outcome = revoked(app, job, terminated=False)
        return headers, outcome
    if stored_state == STATE_UNREAD and delivery.redelivered and headers.group is None:
        # Its result may say SUCCESS (the check below), but could not be read: running it blind
        # could repeat a finished task's effects. Hand it back, not as a delivery attempt, to
        # be looked up again shortly.
        return headers, Outcome(
            job_id,
            headers.id,
            headers.task,
            action=Action.DELAY,
            delay_until=now + UNREAD_PAUSE,
            summary="redelivered and its stored state could not be read; given back",
        )
    if (
        stored_state == states.SUCCESS
        and headers.group is None
        and not app.topology.fanout_bound(delivery.queue)
    ):
        # Success is final: a message whose task already succeeded ran to the end before (its
        # ack was lost, or it was sent twice: a chord body whose sender died before it could
        # record the sending). Running it again would only duplicate side effects. Except a
        # group member (if it heads a chord whose body was claimed by a worker that died
        # before sending it, running it is what lets the chord finish) and a broadcast (every
        # worker runs the one message, task id and all).
        return headers, Outcome(
            job_id,
            headers.id,
            headers.task,
            summary="already succeeded; acknowledged without running",
        )
    return headers, None


@dataclass(slots=True)
class Call:
    """A job whose message decoded and whose arguments fit: ready to run."""

    job: Job
    task: Task[Any, Any]
    request: Request
    started: float
    #: (hard, soft) seconds, from the message, else the task, else the app settings.
    time_limits: tuple[float | None, float | None]


def prepare(app: Celeriac, job: Job) -> Call | Outcome:
    """Decode and check a job; an :class:`Outcome` means it must not run."""
    headers = job.headers
    started = time.perf_counter()
    task = app.tasks.get(headers.task)
    if task is None:
        missing = NotRegistered(app.tasks.missing_message(headers.task))
        return refuse(app, job.job_id, headers, headers.id, missing)
    try:
        args, kwargs, embed = decode_body(
            job.message,
            headers,
            app.serializers,
            accepted(app),
            max_size=app.conf.broker_max_message_size,
        )
        task.check_arguments(args, kwargs)
    except (ProtocolError, TypeError) as exc:
        return refuse(app, job.job_id, headers, headers.id, exc)
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
        is_eager=job.eager,
    )
    return Call(job, task, request, started, time_limits(app, task, headers))


def time_limits(
    app: Celeriac, task: Task[Any, Any], headers: TaskHeaders
) -> tuple[float | None, float | None]:
    hard = headers.time_limit
    if hard is None:
        hard = task.time_limit if task.time_limit is not None else app.conf.task_time_limit
    soft = headers.soft_time_limit
    if soft is None:
        soft = (
            task.soft_time_limit
            if task.soft_time_limit is not None
            else app.conf.task_soft_time_limit
        )
    return hard, soft


_NOT_RUN = object()


def execute(
    app: Celeriac,
    job: Job,
    soft_limit: Callable[[float | None], AbstractContextManager[object]] = nullcontext_factory,
) -> Outcome:
    """Run one job here and say what to store and how to acknowledge. Never raises.

    ``soft_limit`` arms the soft time limit around the call; pools pass the mechanism that
    works where they run tasks (SIGALRM in a child process, an async exception in a thread).
    """
    call = prepare(app, job)
    if isinstance(call, Outcome):
        return call
    value: Any = _NOT_RUN
    error: BaseException | None = None
    token = set_request(call.request)
    run = tracing.running(job)  # the run's span, when OpenTelemetry traces
    try:
        _prerun(call)
        try:
            with soft_limit(call.time_limits[1]):
                value = call_task(call.task, call.request.args, call.request.kwargs)
        except BaseException as exc:
            error = exc
        # Still in the task's context: what it causes (callbacks, a retry) is built knowing
        # whom it comes from.
        return run.outcome(_finish_guarded(app, call, value, error))
    finally:
        run.end()
        reset_request(token)


async def execute_async(app: Celeriac, job: Job) -> Outcome:
    """Run one job on the running event loop: coroutines directly, sync tasks in a thread."""
    import asyncio  # here and below, not at the top: only async tasks and pools need it

    call = prepare(app, job)
    if isinstance(call, Outcome):
        return call
    value: Any = _NOT_RUN
    error: BaseException | None = None
    token = set_request(call.request)
    run = tracing.running(job)  # the run's span, when OpenTelemetry traces
    try:
        _prerun(call)
        try:
            if call.task.is_coroutine:
                value = await _with_limits(
                    call, call.task(*call.request.args, **call.request.kwargs)
                )
            else:
                # to_thread copies the context, so self.request works in the thread too.
                value = await _with_limits(
                    call, asyncio.to_thread(call.task, *call.request.args, **call.request.kwargs)
                )
        except BaseException as exc:
            error = exc
        return run.outcome(_finish_guarded(app, call, value, error))
    finally:
        run.end()
        reset_request(token)


async def _with_limits(call: Call, awaitable: Awaitable[Any]) -> Any:
    hard, soft = call.time_limits
    limit = min((t for t in (soft, hard) if t is not None), default=None)
    if limit is None:
        return await awaitable
    import asyncio

    try:
        return await asyncio.wait_for(awaitable, limit)
    except asyncio.TimeoutError:
        if soft is not None and limit == soft:
            raise SoftTimeLimitExceeded(f"soft time limit ({soft}s) exceeded") from None
        raise TimeLimitExceeded(f"time limit ({hard}s) exceeded") from None


def _finish_guarded(app: Celeriac, call: Call, value: Any, error: BaseException | None) -> Outcome:
    try:
        return finish(app, call, value, error)
    except Exception as exc:
        # e.g. a callback signature that cannot be built: the task ran, but what it asked for
        # next cannot happen. Fail it loudly and set the message aside, never lose it.
        logger.exception("finishing task %s[%s] failed", call.task.name, call.request.id)
        return refuse(app, call.job.job_id, call.job.headers, call.request.id, exc)


def _prerun(call: Call) -> None:
    signals.task_prerun.send(
        call.task,
        task_id=call.request.id,
        task=call.task,
        args=call.request.args,
        kwargs=call.request.kwargs,
    )


def finish(app: Celeriac, call: Call, value: Any, error: BaseException | None) -> Outcome:
    """The outcome of a call that returned ``value`` or raised ``error``."""
    task, request, job_id = call.task, call.request, call.job.job_id
    if error is None:
        outcome = success_outcome(app, task, request, job_id, value)
    elif isinstance(error, Retry):
        outcome = retry_outcome(app, task, request, job_id, error)
    elif isinstance(error, Reject):
        action = Action.REQUEUE if error.requeue else Action.DEAD_LETTER
        outcome = Outcome(
            job_id,
            request.id,
            task.name,
            action=action,
            reason=f"rejected by task: {error.reason}",
            summary="rejected",
            event=("task-rejected", {"requeue": bool(error.requeue)}),
        )
    elif isinstance(error, Ignore):
        outcome = Outcome(job_id, request.id, task.name, summary="ignored")
    elif isinstance(error, KeyboardInterrupt):
        raise error
    else:
        outcome = _failure_or_autoretry(app, task, request, job_id, error)
    outcome.runtime = time.perf_counter() - call.started
    signals.task_postrun.send(
        task,
        task_id=request.id,
        task=task,
        args=request.args,
        kwargs=request.kwargs,
        retval=value if error is None else error,
        state=outcome.state,
    )
    return outcome


_loops = threading.local()


def call_task(task: Task[Any, Any], args: list[Any], kwargs: dict[str, Any]) -> Any:
    """Call a task; a coroutine runs to completion on this thread's own event loop."""
    if not task.is_coroutine:
        return task(*args, **kwargs)
    import asyncio

    loop = getattr(_loops, "loop", None)
    if loop is None or loop.is_closed():
        # One loop per thread, kept: connection pools created by one task stay usable by the next.
        loop = _loops.loop = asyncio.new_event_loop()
    return loop.run_until_complete(task(*args, **kwargs))


def _failure_or_autoretry(
    app: Celeriac, task: Task[Any, Any], request: Request, job_id: int, exc: BaseException
) -> Outcome:
    if _should_autoretry(task, exc):
        limit = task.effective_max_retries()
        if limit is None or request.retries < limit:
            auto = Retry(exc=exc, when=task.autoretry_countdown(request.retries))
            return retry_outcome(app, task, request, job_id, auto)
    return failure_outcome(app, task, request, job_id, exc)


def _should_autoretry(task: Task[Any, Any], exc: BaseException) -> bool:
    if not task.autoretry_for or not isinstance(exc, tuple(task.autoretry_for)):
        return False
    return not (task.dont_autoretry_for and isinstance(exc, tuple(task.dont_autoretry_for)))
