"""The application object: settings, the task registry, and lazily opened broker and backend."""

from __future__ import annotations

import datetime as dt
import importlib
import threading
from collections.abc import Callable, Iterable, Sequence
from typing import TYPE_CHECKING, Any, Concatenate, Literal, ParamSpec, TypeVar, overload

from celeriac import sending
from celeriac._fork import generation
from celeriac.backends import ResultBackend
from celeriac.brokers import Broker
from celeriac.canvas.builtins import register_builtins
from celeriac.canvas.signature import Signature
from celeriac.connections import Connections
from celeriac.control import Control
from celeriac.current import set_current_app
from celeriac.discovery import Packages, discover
from celeriac.home import creator_directory, default_sqlite_url
from celeriac.keyring import keyring_of
from celeriac.protocol.publication import Publication
from celeriac.protocol.serializers import SerializerRegistry, default_registry
from celeriac.result import AsyncResult
from celeriac.result import AsyncResult as _AsyncResult
from celeriac.routing import Topology
from celeriac.settings import DEFAULT_BROKER_URL, Settings, settings_from_object
from celeriac.signals import Signal
from celeriac.tasks.registry import TaskRegistry
from celeriac.tasks.task import Task
from celeriac.urls import redact

if TYPE_CHECKING:
    from celeriac.beat.store import BeatStore

P = ParamSpec("P")
R = TypeVar("R")


#: Call templates an app keeps (one per task name sent with no options), at most.
_TEMPLATES_KEPT = 1024


class Celeriac:
    """A Celeriac application.

    >>> app = Celeriac("proj")      # celeriac.sqlite3 beside the module that runs this line
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
        if self.conf.broker_url == DEFAULT_BROKER_URL:
            # Not relative to the working directory: see celeriac.home. Not explicit either, so
            # a config object still sets broker_url.
            self.conf.set_default("broker_url", default_sqlite_url(creator_directory()))
        self.tasks = TaskRegistry()
        #: Celery's hook: receivers (``sender=app``) run once before beat reads beat_schedule.
        self.on_after_configure = Signal("on_after_configure", "The app's settings are final.")
        self.serializers: SerializerRegistry = default_registry
        self._lock = threading.Lock()
        self._connections: Connections | None = None
        #: (task_queues as configured, the other settings it depends on, the topology)
        self._topology: tuple[Any, tuple[Any, ...], Topology] | None = None
        #: name -> (template, what it was made from, the connections then): see _template
        self._templates: dict[str, tuple[sending.CallTemplate, tuple[Any, ...], Any]] = {}
        self._fork_gen = generation()
        #: autodiscover_tasks() calls not run yet: (packages, related name)
        self._discover: list[tuple[Packages, str]] = []
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
        set_current_app(self)  # as Celery's set_as_current: see celeriac.current

    def set_current(self) -> None:
        """Make this the app signatures built without one use (the last app created is)."""
        set_current_app(self)

    # -- configuration ---------------------------------------------------------------------
    def config_from_object(self, obj: Any, *, namespace: str | None = None) -> None:
        """Read settings from a module, class, mapping or import path (``"proj.celeryconfig"``).

        Keyword arguments given to the app still win over what the object says.
        """
        self.conf.setdefaults(settings_from_object(obj, namespace))
        self._reset_connections()

    def import_modules(self) -> None:
        """Import ``imports`` and ``include`` so that their tasks register (workers do this),
        and the tasks modules :meth:`autodiscover_tasks` was asked to find."""
        for name in [*self.conf.imports, *self.conf.include]:
            importlib.import_module(name)
        pending, self._discover = self._discover, []
        for packages, related_name in pending:
            discover(packages, related_name)

    def autodiscover_tasks(
        self, packages: Packages = None, related_name: str = "tasks", force: bool = False
    ) -> None:
        """Import ``<package>.tasks`` for each of ``packages`` (a list, or a callable returning
        one; default: Django's installed apps) when the app imports its modules, or now with
        ``force=True`` (see :mod:`celeriac.discovery`)."""
        if force:
            discover(packages, related_name)
        else:
            self._discover.append((packages, related_name))

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
        *,
        options: dict[str, Any] | None = None,
        immutable: bool = False,
        subtask_type: str | None = None,
        **more_options: Any,
    ) -> Signature:
        """A signature of the task ``name``; options as ``apply_async`` takes them, given as
        ``options={...}`` or as keywords (Celery accepts both)."""
        merged = {**(options or {}), **more_options}
        return Signature(
            name,
            args,
            kwargs,
            options=merged,
            immutable=immutable,
            subtask_type=subtask_type,
            app=self,
        )

    def AsyncResult(self, task_id: str, task_name: str | None = None) -> _AsyncResult[Any]:
        return AsyncResult(task_id, self, task_name=task_name)

    @property
    def control(self) -> Control:
        """Revoke tasks (``app.control.revoke(task_id, terminate=True)``)."""
        return Control(self)

    # -- connections ----------------------------------------------------------------------
    @property
    def connections(self) -> Connections:
        """The transports this process opened for this app (new ones after a fork)."""
        if self._fork_gen != generation():
            # Forked: the parent's connections are not usable here, and a lock one of its
            # threads held at the fork would never be released.
            self._fork_gen = generation()
            self._lock = threading.Lock()
            self._connections = None
        conns = self._connections
        if conns is None:
            with self._lock:
                if self._connections is None:
                    self._connections = Connections(self.conf, lambda: self.topology)
                conns = self._connections
        return conns

    @property
    def broker(self) -> Broker:
        """This process's broker, connected on first use."""
        return self.connections.broker

    @property
    def backend(self) -> ResultBackend:
        """This process's result backend, connected on first use."""
        return self.connections.backend

    @property
    def beat_store(self) -> BeatStore:
        """Beat's shared state, kept in the broker's store."""
        return self.connections.beat_store

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

    def result_backend_url(self) -> str | None:
        """The configured backend, or the broker's own store when it has one."""
        return self.connections.backend_url()

    def _reset_connections(self) -> None:
        self.close()

    def close(self) -> None:
        """Close this process's connections; they reopen on next use."""
        conns, self._connections = self._connections, None
        if conns is not None and self._fork_gen == generation():  # a parent's: not ours
            conns.close()

    # -- sending --------------------------------------------------------------------------
    def send_task(
        self,
        name: str,
        args: tuple[Any, ...] | list[Any] | None = None,
        kwargs: dict[str, Any] | None = None,
        **options: Any,
    ) -> _AsyncResult[Any]:
        """Send a task by name (it needs not be registered here). ``transaction=`` a psycopg
        connection to the postgresql:// broker's database sends it only if that connection's
        transaction commits (:mod:`celeriac.transactional`)."""
        transaction = options.pop("transaction", None)
        publication = self.prepare_message(name, args, kwargs, **options)
        if transaction is not None:
            from celeriac.transactional import publish_in

            publish_in(self, self.broker, [publication], transaction)
            return AsyncResult(str(publication.message.headers["id"]), self, task_name=name)
        sending.publish(self, self.broker, [publication])
        return AsyncResult(str(publication.message.headers["id"]), self, task_name=name)

    def send_many(
        self, signatures: Iterable[Signature], /, **options: Any
    ) -> list[_AsyncResult[Any]]:
        """Send many task calls at once: ``app.send_many([add.s(1, 2), add.s(3, 4)])``.

        Every message is built first, so an argument the serializer cannot encode raises
        (:class:`~celeriac.exceptions.EncodeError`, naming the task and the call) before any
        is sent; then they go to the broker in one round trip per ``max_batch`` messages of
        the broker (Redis 1,000). ``options`` are ``apply_async``'s and apply to every call,
        winning over a signature's own; workflows (chains, groups, chords) may be among
        the signatures. Returns the calls' result handles, in the order given.
        """
        from celeriac.canvas.plan import send_many

        sigs = list(signatures)
        if self.conf.task_always_eager:
            return [sig.apply(**options) for sig in sigs]
        return send_many(self, sigs, options)

    def prepare_message(
        self,
        name: str,
        args: tuple[Any, ...] | list[Any] | None = None,
        kwargs: dict[str, Any] | None = None,
        *,
        task_id: str | None = None,
        **options: Any,
    ) -> Publication:
        """The :class:`~celeriac.protocol.publication.Publication` for a task call: its
        message, route, priority and ETA (nothing is sent).

        ``options`` are :meth:`call_template`'s (``apply_async``'s). Each option is the
        call's, else the task's, else the setting's (see :mod:`celeriac.sending`).
        """
        return self._template(name, options).publication(args, kwargs, task_id)

    def _template(self, name: str, options: dict[str, Any]) -> sending.CallTemplate:
        """``call_template(name, **options)``, kept for the common call: no options (but
        ``_task``), sent from outside any task. Its template then depends on nothing but the
        settings, the task's options and this process's connections, so it is made again only
        when one of those changes: making one cost ~14 us of a ``delay()``'s ~87 us of CPU on
        RabbitMQ without confirms (measured in one process). Settings are seen changed when one
        is set (``app.conf.x = ...``, ``update()``), not when a list or dict one holds is
        changed in place.

        ``rpc://``'s reply queue is asked for on every call all the same: RabbitMQ deletes it
        with its channel, and asking declares it again after a reconnection, before the task
        that names it is sent.
        """
        if (options and (len(options) > 1 or "_task" not in options)) or (
            not sending.outside_tasks()
        ):
            return self.call_template(name, **options)
        task = options.get("_task") or self.tasks.get(name)
        kept = self._templates.get(name)
        stamp = (self.conf._changes, generation(), sending.template_inputs(task))
        if kept is not None:
            template, made_at, conns = kept
            if (
                made_at == stamp
                and template.task is task
                and template.conf is self.conf
                and conns is self._connections
            ):
                reply_to = template.fields["reply_to"]
                if not reply_to or self.backend.reply_to() == reply_to:
                    return template
        template = self.call_template(name, _task=task)
        if len(self._templates) >= _TEMPLATES_KEPT:  # names sent by send_task may be unbounded
            self._templates.clear()
        self._templates[name] = (template, stamp, self._connections)
        return template

    def call_template(
        self,
        name: str,
        *,
        countdown: float | None = None,
        eta: float | dt.datetime | None = None,
        expires: float | dt.datetime | None = None,
        queue: Any = None,
        exchange: Any = None,
        routing_key: str | None = None,
        exchange_type: str | None = None,
        priority: int | None = None,
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
        reply_to: str | None = None,
        _task: Task[Any, Any] | None = None,
        **other: Any,
    ) -> sending.CallTemplate:
        """What :meth:`prepare_message` resolves for calls of ``name`` with these options,
        whatever their arguments: :meth:`~celeriac.sending.CallTemplate.publication` adds a
        call's arguments and id. ``send_many`` resolves once per kind of call in a batch."""
        if other:
            sending.check_options(other)
        conf = self.conf
        task = _task if _task is not None else self.tasks.get(name)
        parent_id, root_id = sending.lineage(parent_id, root_id)
        time_limit, soft_time_limit = sending.time_limits_of(time_limit, soft_time_limit, task)
        fields = {
            "serializer": sending.serializer_of(serializer, task, conf),
            "compression": sending.compression_of(compression, task, conf),
            "retries": retries,
            "root_id": root_id,
            "parent_id": parent_id,
            "group_id": group_id,
            "group_index": group_index,
            "time_limit": time_limit,
            "soft_time_limit": soft_time_limit,
            "shadow": sending.shadow_of(shadow, task),
            "ignore_result": sending.ignore_result_of(ignore_result, task, conf),
            "callbacks": sending.signature_list(link),
            "errbacks": sending.signature_list(link_error),
            "chain": chain,
            "chord": chord,
            "extra_headers": headers,
            "reply_to": sending.reply_to_of(reply_to, lambda: self.backend.reply_to()),
        }
        return sending.CallTemplate(
            name=name,
            task=task,
            conf=conf,
            topology=self.topology,
            registry=self.serializers,
            countdown=countdown,
            eta=eta,
            expires=expires,
            route_options={
                "queue": queue,
                "exchange": exchange,
                "routing_key": routing_key,
                "exchange_type": exchange_type,
            },
            priority=priority,
            fields=fields,
            keyring=keyring_of(conf),
        )

    def __repr__(self) -> str:
        return f"<Celeriac {self.main or '__main__'} broker={redact(self.conf.broker_url)}>"
