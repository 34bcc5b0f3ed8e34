"""The application object: settings, the task registry, and lazily opened broker and backend."""

from __future__ import annotations

import datetime as dt
import fnmatch
import importlib
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Concatenate, Literal, ParamSpec, TypeVar, overload

from celeriac._fork import generation
from celeriac.backends import ResultBackend, create_backend
from celeriac.brokers import Broker, create_broker
from celeriac.canvas.builtins import register_builtins
from celeriac.canvas.signature import Signature
from celeriac.control import Control
from celeriac.exceptions import ConfigurationError, MessageTooLarge
from celeriac.protocol.message import build_task_message, new_id
from celeriac.protocol.publication import Publication, Route
from celeriac.protocol.serializers import SerializerRegistry, default_registry
from celeriac.result import AsyncResult
from celeriac.result import AsyncResult as _AsyncResult
from celeriac.routing import Topology, coerce_queue
from celeriac.settings import Settings, settings_from_object
from celeriac.signals import Signal
from celeriac.tasks.context import current_request
from celeriac.tasks.registry import TaskRegistry
from celeriac.tasks.task import Task

P = ParamSpec("P")
R = TypeVar("R")

#: Options Celery's apply_async accepts that mean nothing for Celeriac's brokers.
_IGNORED_OPTIONS = frozenset(
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
        "reply_to",
        "declare",
        "stamped_headers",
        "stamps",
        "delivery_mode",
    }
)


class Celeriac:
    """A Celeriac application.

    >>> app = Celeriac("proj")                     # SQLite file in the working directory
    >>> app = Celeriac("proj", broker_url="memory://", task_always_eager=True)
    """

    def __init__(
        self,
        main: str | None = None,
        *,
        broker: str | None = None,
        backend: str | None = None,
        include: Sequence[str] | None = None,
        config_source: Any = None,
        **settings: Any,
    ) -> None:
        self.main = main
        self.conf = Settings()
        self.tasks = TaskRegistry()
        #: Celery's hook: receivers (``sender=app``) run once before beat reads beat_schedule.
        self.on_after_configure = Signal("on_after_configure", "The app's settings are final.")
        self.serializers: SerializerRegistry = default_registry
        self._lock = threading.Lock()
        self._broker: Broker | None = None
        self._backend: ResultBackend | None = None
        #: (task_queues as configured, the other settings it depends on, the topology)
        self._topology: tuple[Any, tuple[Any, ...], Topology] | None = None
        self._fork_gen = generation()
        if config_source is not None:
            self.config_from_object(config_source)
        explicit = dict(settings)
        if broker is not None:
            explicit["broker_url"] = broker
        if backend is not None:
            explicit["result_backend"] = backend
        if include:
            explicit["include"] = list(include)
        if explicit:
            self.conf.update(explicit)
        register_builtins(self)

    # -- configuration ---------------------------------------------------------------------
    def config_from_object(self, obj: Any, *, namespace: str | None = None) -> None:
        """Read settings from a module, class, mapping or import path (``"proj.celeryconfig"``).

        Keyword arguments given to the app still win over what the object says.
        """
        self.conf.setdefaults(settings_from_object(obj, namespace))
        self._reset_connections()

    def import_modules(self) -> None:
        """Import ``imports`` and ``include`` so that their tasks register (workers do this)."""
        for name in [*self.conf.imports, *self.conf.include]:
            importlib.import_module(name)

    # -- tasks ----------------------------------------------------------------------------
    @overload
    def task(self, fun: Callable[P, R], /) -> Task[P, R]: ...

    @overload
    def task(
        self, *, bind: Literal[True], name: str | None = ..., **options: Any
    ) -> Callable[[Callable[Concatenate[Any, P], R]], Task[P, R]]: ...

    @overload
    def task(
        self, *, bind: Literal[False] = ..., name: str | None = ..., **options: Any
    ) -> Callable[[Callable[P, R]], Task[P, R]]: ...

    def task(  # type: ignore[misc]  # mypy cannot match **options across the overloads
        self,
        fun: Callable[..., Any] | None = None,
        /,
        *,
        bind: bool = False,
        name: str | None = None,
        **options: Any,
    ) -> Any:
        """Register a function as a task: ``@app.task`` or ``@app.task(name=..., bind=True)``."""

        def register(f: Callable[..., Any]) -> Task[Any, Any]:
            task_name = name or self.gen_task_name(f)
            task: Task[Any, Any] = Task(self, f, name=task_name, bind=bind, **options)
            self.tasks.register(task)
            return task

        if fun is not None:
            if not callable(fun):
                raise TypeError("@app.task takes a function, or keyword options only")
            return register(fun)
        return register

    def add_periodic_task(
        self,
        schedule: Any,
        sig: Any,
        args: tuple[Any, ...] | list[Any] = (),
        kwargs: dict[str, Any] | None = None,
        name: str | None = None,
        **opts: Any,
    ) -> str:
        """Celery's ``add_periodic_task``: an entry in ``beat_schedule`` (see celeriac.beat)."""
        from celeriac.beat.api import add_periodic_task

        return add_periodic_task(self, schedule, sig, args, kwargs, name, **opts)

    def gen_task_name(self, fun: Callable[..., Any]) -> str:
        module = fun.__module__
        if module == "__main__" and self.main:
            module = self.main
        return f"{module}.{fun.__qualname__}"

    def signature(
        self,
        name: str,
        args: tuple[Any, ...] | list[Any] | None = None,
        kwargs: dict[str, Any] | None = None,
        **options: Any,
    ) -> Signature:
        return Signature(name, args, kwargs, app=self, **options)

    def AsyncResult(self, task_id: str, task_name: str | None = None) -> _AsyncResult[Any]:
        return AsyncResult(task_id, self, task_name=task_name)

    @property
    def control(self) -> Control:
        """Revoke tasks (``app.control.revoke(task_id, terminate=True)``)."""
        return Control(self)

    # -- connections ----------------------------------------------------------------------
    @property
    def broker(self) -> Broker:
        """This process's broker connection, opened on first use."""
        self._check_fork()
        if self._broker is None:
            with self._lock:
                if self._broker is None:
                    broker = create_broker(self.conf.broker_url, self.conf.broker_transport_options)
                    broker.topology = self.topology
                    self._broker = broker
        return self._broker

    @property
    def topology(self) -> Topology:
        """``task_queues`` resolved: the exchanges, queues and bindings routes refer to."""
        conf = self.conf
        queues = conf.task_queues
        key = (
            conf.task_default_queue,
            conf.task_create_missing_queues,
            conf.worker_hostname,
            conf.task_queue_max_priority,
        )
        cached = self._topology
        # The setting itself, compared by identity (by value it would cost a walk per call):
        # held in the cache, so its address cannot be reused by a later value while it is here.
        if cached is None or cached[0] is not queues or cached[1] != key:
            cached = self._topology = (queues, key, Topology.from_settings(conf))
        return cached[2]

    @property
    def backend(self) -> ResultBackend:
        """This process's result backend, opened on first use."""
        self._check_fork()
        if self._backend is None:
            with self._lock:
                if self._backend is None:
                    self._backend = create_backend(
                        self.result_backend_url(),
                        serializer=self.conf.result_serializer,
                        accept=self.conf.result_accept_content or self.conf.accept_content,
                        expires=self.conf.result_expires,
                        transport_options=self.conf.result_backend_transport_options,
                    )
        return self._backend

    def open_reply_queue(self) -> None:
        """With ``rpc://`` results, open this process's reply queue before sending: a task
        names it only when it exists, and a worker's answer needs it (Celery's client does
        the same on its first send)."""
        if self._backend is None and (self.result_backend_url() or "").startswith("rpc:"):
            self.backend  # noqa: B018 - opening it declares the queue

    def result_backend_url(self) -> str | None:
        """The configured backend, or the broker's own store when it has one."""
        if self.conf.result_backend:
            return self.conf.result_backend
        scheme = self.conf.broker_url.partition("://")[0].lower()
        return self.conf.broker_url if scheme in ("sqlite", "memory") else None

    def _check_fork(self) -> None:
        # Connections opened by a parent process are not usable after fork: start afresh.
        if self._fork_gen != generation():
            self._fork_gen = generation()
            self._broker = None
            self._backend = None
            self._lock = threading.Lock()

    def _reset_connections(self) -> None:
        self.close()

    def close(self) -> None:
        """Close this process's connections; they reopen on next use."""
        broker, backend = self._broker, self._backend
        self._broker = self._backend = None
        if broker is not None:
            broker.close()
        if backend is not None:
            backend.close()

    # -- sending --------------------------------------------------------------------------
    def send_task(
        self,
        name: str,
        args: tuple[Any, ...] | list[Any] | None = None,
        kwargs: dict[str, Any] | None = None,
        **options: Any,
    ) -> _AsyncResult[Any]:
        """Send a task by name (it needs not be registered here)."""
        publication = self.prepare_message(name, args, kwargs, **options)
        self.open_reply_queue()
        self.broker.publish(publication)
        return AsyncResult(str(publication.message.headers["id"]), self, task_name=name)

    def prepare_message(
        self,
        name: str,
        args: tuple[Any, ...] | list[Any] | None = None,
        kwargs: dict[str, Any] | None = None,
        *,
        countdown: float | None = None,
        eta: float | dt.datetime | None = None,
        expires: float | dt.datetime | None = None,
        queue: Any = None,
        exchange: Any = None,
        routing_key: str | None = None,
        exchange_type: str | None = None,
        priority: int | None = None,
        task_id: str | None = None,
        headers: dict[str, Any] | None = None,
        link: Any = None,
        link_error: Any = None,
        serializer: str | None = None,
        compression: str | None = None,
        ignore_result: bool | None = None,
        time_limit: float | None = None,
        soft_time_limit: float | None = None,
        shadow: str | None = None,
        retries: int = 0,
        root_id: str | None = None,
        parent_id: str | None = None,
        group_id: str | None = None,
        group_index: int | None = None,
        chain: list[dict[str, Any]] | None = None,
        chord: dict[str, Any] | None = None,
        _task: Task[Any, Any] | None = None,
        **other: Any,
    ) -> Publication:
        """The :class:`~celeriac.protocol.publication.Publication` for a task call: its
        message, route, priority and ETA (nothing is sent)."""
        unknown = set(other) - _IGNORED_OPTIONS
        if unknown:
            raise TypeError(f"unknown apply_async option(s): {', '.join(sorted(unknown))}")
        conf = self.conf
        task = _task if _task is not None else self.tasks.get(name)
        args = tuple(args or ())
        kwargs = dict(kwargs or {})
        now = time.time()
        eta_ts = _timestamp(eta) if eta is not None else None
        if countdown is not None:
            eta_ts = now + float(countdown)
        if expires is None and task is not None and task.expires is not None:
            expires = task.expires
        expires_ts = None
        if expires is not None:
            expires_ts = (
                _timestamp(expires) if isinstance(expires, dt.datetime) else now + float(expires)
            )
        parent = current_request()
        if parent is not None and not parent.is_eager:
            parent_id = parent_id or parent.id
            root_id = root_id or parent.root_id or parent.id
        route, route_priority = self._route(
            name,
            args,
            kwargs,
            task,
            {
                "queue": queue,
                "exchange": exchange,
                "routing_key": routing_key,
                "exchange_type": exchange_type,
            },
        )
        if priority is None:
            priority = route_priority
        if priority is None and task is not None:
            priority = task.priority
        if priority is None:
            priority = conf.task_default_priority or 0
        ser = serializer or (task.serializer if task is not None else None) or conf.task_serializer
        comp = (
            compression or (task.compression if task is not None else None) or conf.task_compression
        )
        if ignore_result is None:
            ignore_result = bool(
                task.ignore_result
                if task is not None and task.ignore_result is not None
                else conf.task_ignore_result
            )
        if task is not None:
            time_limit = time_limit if time_limit is not None else task.time_limit
            soft_time_limit = (
                soft_time_limit if soft_time_limit is not None else task.soft_time_limit
            )
            shadow = shadow or task.shadow
        message = build_task_message(
            self.serializers,
            task_name=name,
            task_id=task_id or new_id(),
            args=args,
            kwargs=kwargs,
            serializer=ser,
            compression=comp,
            eta=eta_ts,
            expires=expires_ts,
            retries=retries,
            root_id=root_id,
            parent_id=parent_id,
            group_id=group_id,
            group_index=group_index,
            time_limit=time_limit,
            soft_time_limit=soft_time_limit,
            shadow=shadow,
            ignore_result=ignore_result,
            callbacks=_sig_list(link),
            errbacks=_sig_list(link_error),
            chain=chain,
            chord=chord,
            extra_headers=headers,
            priority=int(priority),
            now=now,
        )
        limit = conf.broker_max_message_size
        if limit and message.size > limit:
            raise MessageTooLarge(
                f"task {name!r}: encoded body is {message.size} bytes, over "
                f"broker_max_message_size={limit}; pass a reference (a path, a key) instead"
            )
        return Publication(message, route, int(priority), eta_ts)

    def _route(
        self,
        name: str,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        task: Task[Any, Any] | None,
        options: dict[str, Any],
    ) -> tuple[Route, int | None]:
        """Celery's rule: ``apply_async`` options win over the matching ``task_routes`` entry,
        key by key; with neither a queue nor an exchange, the task's queue or the default."""
        explicit = {k: v for k, v in options.items() if v not in (None, "")}
        route: dict[str, Any] = {}
        if not explicit.get("queue") and not explicit.get("exchange"):
            route = _match_route(self.conf.task_routes, name, args, kwargs, task)
        merged = {**{k: v for k, v in route.items() if v not in (None, "")}, **explicit}
        queue = merged.get("queue")
        if queue is not None and not isinstance(queue, str):
            queue = coerce_queue(queue).name  # Celery lets a route hold a Queue object
        if not queue and not (merged.get("exchange") and merged.get("routing_key")):
            # As Celery: the task's or the default queue, unless an exchange and a routing key
            # say where. A bare routing_key names a queue (the default exchange's way).
            bare_key = None if merged.get("exchange") else explicit.get("routing_key")
            queue = bare_key or (task.queue if task is not None else None)
            queue = queue or self.conf.task_default_queue
            if bare_key:
                merged.pop("routing_key")
        destination = self.topology.destination(
            queue, merged.get("exchange"), merged.get("routing_key"), merged.get("exchange_type")
        )
        return destination, route.get("priority")

    def __repr__(self) -> str:
        return f"<Celeriac {self.main or '__main__'} broker={self.conf.broker_url}>"


def _timestamp(value: float | dt.datetime) -> float:
    if isinstance(value, dt.datetime):
        if value.tzinfo is None:
            value = value.replace(tzinfo=dt.timezone.utc)
        return value.timestamp()
    return float(value)


def _sig_list(value: Any) -> list[dict[str, Any]] | None:
    if value is None:
        return None
    items = value if isinstance(value, list | tuple) else [value]
    return [dict(v) for v in items]


def _match_route(
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
