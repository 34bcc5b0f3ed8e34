"""What one task call's message says, when ``apply_async``, the task and the settings disagree.

Celery's precedence, option by option: what the call gives (``apply_async``/``send_task``)
wins, then the task's own option (``@app.task(priority=...)``), then the setting
(``task_default_priority``, ``task_serializer``, ...). Where the message goes follows
:func:`resolve_route`. :meth:`Celeriac.prepare_message <celeriac.app.Celeriac.prepare_message>`
calls these in turn; none does I/O.
"""

from __future__ import annotations

import datetime as dt
import fnmatch
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from contextvars import ContextVar
from typing import TYPE_CHECKING, Any

from celeriac import signals, tracing
from celeriac.exceptions import ConfigurationError, MessageTooLarge, ProtocolError
from celeriac.protocol.message import Message, build_task_message, decode_body, new_id, read_headers
from celeriac.protocol.publication import Publication, Route
from celeriac.protocol.signing import sign_message
from celeriac.routing import Topology, coerce_queue
from celeriac.tasks.context import current_request

if TYPE_CHECKING:
    from celeriac.app import Celeriac
    from celeriac.brokers.base import Broker
    from celeriac.protocol.serializers import SerializerRegistry
    from celeriac.protocol.signing import Keyring
    from celeriac.settings import Settings
    from celeriac.signals import Signal
    from celeriac.tasks.task import Task

#: Options Celery's apply_async accepts that mean nothing for Celeriac's brokers.
IGNORED_OPTIONS = frozenset(
    {
        "mandatory",
        "immediate",
        "retry",
        "retry_policy",
        "add_to_parent",
        "connection",
        "producer",
        "publisher",
        "expiration",
        "declare",
        "stamped_headers",
        "stamps",
        "delivery_mode",
    }
)


def check_options(names: Iterable[str]) -> None:
    """Refuse options neither Celeriac nor Celery knows (a typo would otherwise do nothing)."""
    unknown = set(names) - IGNORED_OPTIONS
    if unknown:
        raise TypeError(f"unknown apply_async option(s): {', '.join(sorted(unknown))}")


# -- when --------------------------------------------------------------------------------------
def eta_of(eta: float | dt.datetime | None, countdown: float | None, now: float) -> float | None:
    """Unix seconds the message is due; ``countdown`` (seconds from ``now``) wins over ``eta``."""
    at = _timestamp(eta) if eta is not None else None
    return now + float(countdown) if countdown is not None else at


def expires_of(
    expires: float | dt.datetime | None, task: Task[Any, Any] | None, now: float
) -> float | None:
    """Unix seconds the message expires: a datetime, or seconds from ``now`` (the call's, or
    the task's ``expires``)."""
    if expires is None and task is not None:
        expires = task.expires
    if expires is None:
        return None
    return _timestamp(expires) if isinstance(expires, dt.datetime) else now + float(expires)


# -- what the call, the task and the settings say -----------------------------------------------
def priority_of(
    given: int | None, routed: int | None, task: Task[Any, Any] | None, conf: Settings
) -> int:
    """The call's priority, then the route's (``task_routes``), the task's, the setting's."""
    for value in (given, routed, task.priority if task is not None else None):
        if value is not None:
            return int(value)
    return int(conf.task_default_priority or 0)


def serializer_of(given: str | None, task: Task[Any, Any] | None, conf: Settings) -> str:
    return given or (task.serializer if task is not None else None) or conf.task_serializer


def compression_of(given: str | None, task: Task[Any, Any] | None, conf: Settings) -> str | None:
    return given or (task.compression if task is not None else None) or conf.task_compression


def ignore_result_of(given: bool | None, task: Task[Any, Any] | None, conf: Settings) -> bool:
    if given is not None:
        return given
    if task is not None and task.ignore_result is not None:
        return bool(task.ignore_result)
    return bool(conf.task_ignore_result)


def time_limits_of(
    hard: float | None, soft: float | None, task: Task[Any, Any] | None
) -> tuple[float | None, float | None]:
    """``(time_limit, soft_time_limit)``: each the call's, else the task's (the worker applies
    its settings to a message that carries none)."""
    if task is None:
        return hard, soft
    return (
        hard if hard is not None else task.time_limit,
        soft if soft is not None else task.soft_time_limit,
    )


def shadow_of(given: str | None, task: Task[Any, Any] | None) -> str | None:
    return given or (task.shadow if task is not None else None)


def lineage(parent_id: str | None, root_id: str | None) -> tuple[str | None, str | None]:
    """``(parent_id, root_id)``: a task sending from inside a worker is the new one's parent,
    and its root the new one's root, unless the call says otherwise."""
    parent = current_request()
    if parent is None or parent.is_eager:
        return parent_id, root_id
    return parent_id or parent.id, root_id or parent.root_id or parent.id


#: Set while a call runs in this process (``apply()``, ``task_always_eager``): what it sends
#: runs here too, and no client waits on a reply queue for it.
running_eagerly: ContextVar[bool] = ContextVar("celeriac_running_eagerly", default=False)


def reply_to_of(given: str | None, own: Callable[[], str | None]) -> str:
    """``rpc://``: the queue the new task's results go to. The call's, else (sent from inside
    a task) that of the client that sent the running task, else this process's own (``own()``,
    asked only then: it may open the backend)."""
    if given or running_eagerly.get():
        return given or ""
    parent = current_request()
    if parent is not None and not parent.is_eager and parent.reply_to:
        return parent.reply_to
    return own() or ""


def signature_list(value: Any) -> list[dict[str, Any]] | None:
    """``link``/``link_error``: one signature or several, as plain dicts."""
    if value is None:
        return None
    items = value if isinstance(value, list | tuple) else [value]
    return [dict(v) for v in items]


def check_size(message: Message, name: str, limit: int | None) -> None:
    """Refuse a body over ``broker_max_message_size`` before any broker sees it."""
    if limit and message.size > limit:
        raise MessageTooLarge(
            f"task {name!r}: encoded body is {message.size} bytes, over "
            f"broker_max_message_size={limit}; pass a reference (a path, a key) instead"
        )


# -- where -------------------------------------------------------------------------------------
def resolve_route(
    conf: Settings,
    topology: Topology,
    name: str,
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    task: Task[Any, Any] | None,
    options: Mapping[str, Any],
) -> tuple[Route, int | None]:
    """Where the message goes, and the priority the matching ``task_routes`` entry gives.

    Celery's rule: ``options`` (the call's ``queue``, ``exchange``, ``routing_key``,
    ``exchange_type``) win over the matching ``task_routes`` entry, key by key; with neither a
    queue nor an exchange, the task's queue or the default.
    """
    if not conf.task_routes and all(v is None or v == "" for v in options.values()):
        # Nothing given, nothing to match (every delay() of an app without task_routes):
        # the task's queue or the default, as below.
        name_of_queue = (task.queue if task is not None else None) or conf.task_default_queue
        return topology.destination(name_of_queue, None, None, None), None
    explicit = {k: v for k, v in options.items() if v not in (None, "")}
    route: dict[str, Any] = {}
    if not explicit.get("queue") and not explicit.get("exchange"):
        route = match_route(conf.task_routes, name, args, kwargs, task)
    merged = {**{k: v for k, v in route.items() if v not in (None, "")}, **explicit}
    queue = merged.get("queue")
    if queue is not None and not isinstance(queue, str):
        queue = coerce_queue(queue).name  # Celery lets a route hold a Queue object
    if not queue and not (merged.get("exchange") and merged.get("routing_key")):
        # As Celery: the task's or the default queue, unless an exchange and a routing key
        # say where. A bare routing_key names a queue (the default exchange's way).
        bare_key = None if merged.get("exchange") else explicit.get("routing_key")
        queue = bare_key or (task.queue if task is not None else None)
        queue = queue or conf.task_default_queue
        if bare_key:
            merged.pop("routing_key")
    destination = topology.destination(
        queue, merged.get("exchange"), merged.get("routing_key"), merged.get("exchange_type")
    )
    return destination, route.get("priority")


def match_route(
    routes: Any, name: str, args: tuple[Any, ...], kwargs: dict[str, Any], task: Any
) -> dict[str, Any]:
    """Celery's ``task_routes``: a mapping of names/globs, a callable, or a list of those."""
    if not routes:
        return {}
    for router in routes if isinstance(routes, list | tuple) else [routes]:
        if isinstance(router, Mapping):
            for pattern, route in router.items():
                if pattern == name or fnmatch.fnmatchcase(name, pattern):
                    return {"queue": route} if isinstance(route, str) else dict(route)
        elif callable(router):
            route = router(name, args, kwargs, {}, task=task)
            if route:
                return {"queue": route} if isinstance(route, str) else dict(route)
        else:
            raise ConfigurationError(f"task_routes entry {router!r} is not a mapping or callable")
    return {}


def template_inputs(task: Task[Any, Any] | None) -> tuple[Any, ...]:
    """The task's options a :class:`CallTemplate` is made from (``expires`` is read per call)."""
    if task is None:
        return ()
    return (
        task.queue,
        task.priority,
        task.serializer,
        task.compression,
        task.ignore_result,
        task.time_limit,
        task.soft_time_limit,
        task.shadow,
    )


def outside_tasks() -> bool:
    """Whether a call made now is nobody's child: no task runs in this context, nothing runs
    eagerly (see :func:`lineage`, :func:`reply_to_of`)."""
    return current_request() is None and not running_eagerly.get()


class CallTemplate:
    """A task call's message with the call's arguments and id left out: what
    :meth:`Celeriac.prepare_message <celeriac.app.Celeriac.prepare_message>` resolves from the
    options, the task and the settings (:meth:`Celeriac.call_template
    <celeriac.app.Celeriac.call_template>` makes one). :meth:`publication` fills in a call;
    ``prepare_message`` is one template and one publication, ``send_many`` one template per
    kind of call in a batch, so the calls of a batch are built exactly as one call is.

    Times (``countdown``, ``expires`` in seconds) count from each call's own ``now``; the
    route is resolved once unless a ``task_routes`` function must see each call's arguments.
    """

    __slots__ = (
        "conf",
        "countdown",
        "eta",
        "expires",
        "fields",
        "given_priority",
        "keyring",
        "name",
        "priority",
        "registry",
        "route",
        "route_options",
        "task",
        "topology",
    )

    def __init__(
        self,
        *,
        name: str,
        task: Task[Any, Any] | None,
        conf: Settings,
        topology: Topology,
        registry: SerializerRegistry,
        countdown: float | None,
        eta: float | dt.datetime | None,
        expires: float | dt.datetime | None,
        route_options: dict[str, Any],
        priority: int | None,
        fields: dict[str, Any],
        keyring: Keyring | None,
    ) -> None:
        self.name, self.task, self.conf, self.topology = name, task, conf, topology
        self.registry = registry
        self.countdown, self.eta, self.expires = countdown, eta, expires
        self.route_options, self.given_priority = route_options, priority
        self.fields, self.keyring = fields, keyring
        self.route: Route | None = None
        self.priority = 0
        if _static_routes(conf.task_routes):  # else each call is routed with its arguments
            self.route, self.priority = self._routed((), {})

    def _routed(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> tuple[Route, int]:
        route, routed_priority = resolve_route(
            self.conf, self.topology, self.name, args, kwargs, self.task, self.route_options
        )
        return route, priority_of(self.given_priority, routed_priority, self.task, self.conf)

    def publication(
        self,
        args: tuple[Any, ...] | list[Any] | None,
        kwargs: dict[str, Any] | None,
        task_id: str | None = None,
    ) -> Publication:
        """The publication of one call with these arguments (a new id unless given)."""
        args = tuple(args or ())
        kwargs = dict(kwargs or {})
        now = time.time()
        eta_ts = eta_of(self.eta, self.countdown, now)
        if self.route is None:
            route, priority = self._routed(args, kwargs)
        else:
            route, priority = self.route, self.priority
        message = build_task_message(
            self.registry,
            task_name=self.name,
            task_id=task_id or new_id(),
            args=args,
            kwargs=kwargs,
            eta=eta_ts,
            expires=expires_of(self.expires, self.task, now),
            priority=priority,
            now=now,
            **self.fields,
        )
        check_size(message, self.name, self.conf.broker_max_message_size)
        if self.keyring is not None:  # every publish (calls, retries, follow-ups, beat) comes here
            sign_message(message, self.keyring)
        return Publication(message, route, priority, eta_ts)


def _static_routes(routes: Any) -> bool:
    """Whether ``task_routes`` routes by task name alone (no function, which sees the call)."""
    if not routes:
        return True
    routers = routes if isinstance(routes, list | tuple) else [routes]
    return all(isinstance(r, Mapping) for r in routers)


def _timestamp(value: float | dt.datetime) -> float:
    if isinstance(value, dt.datetime):
        if value.tzinfo is None:
            value = value.replace(tzinfo=dt.timezone.utc)
        return value.timestamp()
    return float(value)


def publish(app: Celeriac, broker: Broker, publications: Sequence[Publication]) -> None:
    """Hand ``publications`` to ``broker``, with Celery's ``before_task_publish`` and
    ``after_task_publish`` signals around it (free when no receiver is connected)."""
    announce(app, signals.before_task_publish, publications)
    with tracing.publishing(publications):  # a no-op unless OpenTelemetry traces
        if len(publications) == 1:
            broker.publish(publications[0])
        else:
            size = broker.max_batch or len(publications)
            for start in range(0, len(publications), size):
                broker.publish_many(publications[start : start + size])
    announce(app, signals.after_task_publish, publications)
    if app.conf.task_send_sent_event:
        from celeriac.events.sent import sent

        sent(app, publications)


def announce(app: Celeriac, signal: Signal, publications: Sequence[Publication]) -> None:
    """Send a publish signal for each publication as Celery does: ``sender`` the task name,
    ``body`` the decoded ``(args, kwargs, embed)``, ``headers`` and ``properties`` (which a
    ``before_task_publish`` receiver may still change), ``exchange`` and ``routing_key``."""
    if not signal.receivers:
        return
    registry = app.serializers
    for p in publications:
        message = p.message
        exchange, routing_key = p.route.address
        accept = frozenset({message.content_type})  # our own message: its own type
        try:
            body: Any = decode_body(
                message, read_headers(message, registry, accept), registry, accept
            )
        except ProtocolError:
            body = message.body
        signal.send(
            sender=message.headers.get("task"),
            body=body,
            exchange=exchange,
            routing_key=routing_key,
            headers=message.headers,
            properties=message.properties,
            declare=[],
            retry_policy=None,
        )
