"""Settings with Celery's names, in one typed object.

Precedence, highest first: keyword arguments to :class:`~celeriac.Celeriac` and
``app.conf.update()``, then ``app.config_from_object()``, then the environment
(``CELERIAC_BROKER_URL``, ``CELERIAC_RESULT_BACKEND``), then the defaults below. A name that is not
a setting is an error that names the closest one.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import importlib
import logging
import os
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from celeriac.celery_settings import CELERY_ONLY
from celeriac.exceptions import ConfigurationError

logger = logging.getLogger("celeriac")

DEFAULT_BROKER_URL = "sqlite:///celeriac.sqlite3"
ENV_VARS = {"broker_url": "CELERIAC_BROKER_URL", "result_backend": "CELERIAC_RESULT_BACKEND"}


@dataclass
class Settings:
    """Every setting Celeriac reads; names and meanings follow Celery's where Celery has one."""

    # Broker
    broker_url: str = DEFAULT_BROKER_URL
    broker_transport_options: dict[str, Any] = field(default_factory=dict)
    broker_connection_timeout: float = 4.0
    #: Largest encoded message body accepted at publish (bytes); bigger ones raise MessageTooLarge.
    broker_max_message_size: int = 16 * 1024 * 1024

    # Results
    #: None means: the broker's own store when it has one (SQLite, memory), otherwise no results.
    result_backend: str | None = None
    #: Options for the result backend's connection (Redis: ``global_keyprefix``, ...).
    result_backend_transport_options: dict[str, Any] = field(default_factory=dict)
    result_serializer: str = "json"
    result_accept_content: list[str] | None = None
    result_expires: float | None = 86400.0
    result_extended: bool = False
    #: Largest encoded result document stored (bytes; None: no limit but the backend's own). A
    #: bigger one is stored as a FAILURE raising ResultTooLarge on get().
    result_max_size: int | None = 16 * 1024 * 1024

    # Messages and tasks
    task_serializer: str = "json"
    task_compression: str | None = None
    accept_content: list[str] = field(default_factory=lambda: ["json"])
    task_default_queue: str = "celery"
    task_default_priority: int | None = None
    task_routes: Any = None
    task_queues: Any = None
    task_create_missing_queues: bool = True
    #: ``x-max-priority`` for every RabbitMQ queue that does not set its own (Celery's name).
    task_queue_max_priority: int | None = None
    #: Celeriac acknowledges after the task by default: a worker that dies loses nothing.
    task_acks_late: bool = True
    task_acks_on_failure_or_timeout: bool = True
    task_reject_on_worker_lost: bool = True
    task_always_eager: bool = False
    task_eager_propagates: bool = False
    task_store_eager_result: bool = False
    task_ignore_result: bool = False
    task_store_errors_even_if_ignored: bool = False
    task_track_started: bool = False
    task_time_limit: float | None = None
    task_soft_time_limit: float | None = None
    task_default_rate_limit: str | None = None
    task_default_retry_delay: float = 180.0
    task_max_retries: int | None = 3
    task_annotations: Any = None
    task_protocol: int = 2
    task_send_sent_event: bool = False
    #: HMAC-SHA256 key that signs every task message sent, and the only one a worker accepts
    #: (``"env:NAME"``: read from that environment variable, ``"file:/path"``: from that file).
    #: None (the default): messages are neither signed nor checked. See celeriac.keyring.
    task_signing_key: str | None = field(default=None, repr=False)
    #: Key rotation: every key listed is accepted, the first one signs (same value forms).
    task_signing_keys: list[str] = field(default_factory=list, repr=False)
    #: Sign stored result documents with the signing key; ``get()`` checks them.
    result_signing: bool = False

    # Worker
    worker_concurrency: int | None = None
    worker_pool: str = "prefork"
    #: Messages a worker may lease per slot (Celery's 4): one fetch round trip serves several
    #: short tasks. A message still never waits long behind a running task: see
    #: ``worker_fair_after``.
    worker_prefetch_multiplier: int = 4
    #: How many times ``worker_prefetch_multiplier`` a slot may lease while its tasks run in
    #: well under 4 ms on average (each fetch and settlement then serves more of them); 1:
    #: never more than the multiplier. Only with a multiplier above 1 and ``worker_fair_after``
    #: set.
    worker_prefetch_growth: int = 4
    #: Seconds a task may run before the messages leased behind it (not started) go back to
    #: the broker, uncharged, and leasing waits until it ends (worker/fair.py). 0: lease only
    #: what runs (a multiplier of 1); None: never give back.
    worker_fair_after: float | None = 0.1
    worker_max_tasks_per_child: int | None = None
    worker_max_memory_per_child: int | None = None
    #: The most processes/threads ``pool_grow`` may take the pool to (default: 4 x concurrency).
    worker_max_pool_size: int | None = None
    #: ``--autoscale``: seconds without new work before the pool shrinks (Celery's 30).
    worker_autoscale_keepalive: float = 30.0
    #: A prefork worker on ``memory://`` (its children cannot reach the broker, so this process
    #: consumes and pipes tasks to them): jobs a child may have queued in its pipe. 1 (the
    #: default): one at a time, so a job never waits behind a long task while another child is
    #: free. 2 hides the hand-off latency for short tasks (~20-30% more no-op throughput).
    worker_prefork_pipeline: int = 1
    worker_send_task_events: bool = False
    #: s events are kept where the broker stores them (SQLite's event table); older ones are
    #: deleted by the publishers every minute or so
    event_retention: float = 3600.0
    worker_hostname: str | None = None
    #: Answer remote control (Celery's pidbox: inspect, ping, revoke broadcasts, ...).
    worker_enable_remote_control: bool = True
    #: A message delivered this many times without being acknowledged (its worker died each
    #: time) is dead-lettered instead of run again.
    worker_max_deliveries: int = 5
    worker_log_format: str = "[%(asctime)s: %(levelname)s/%(processName)s] %(message)s"
    #: Port of the worker's Prometheus ``/metrics`` (``--metrics-port``; None: not served;
    #: needs ``pip install celeriac[metrics]``).
    worker_metrics_port: int | None = None
    #: Port of the worker's ``/livez`` and ``/readyz`` (``--health-port``; None: not served).
    worker_health_port: int | None = None
    #: Address both of those listen on.
    worker_http_host: str = "0.0.0.0"
    #: ``/livez`` fails once the worker's loop has not turned for this many seconds.
    worker_liveness_timeout: float = 5.0

    # Dashboard
    #: task names (shell patterns) whose arguments the dashboard shows as ``***``
    dashboard_masked_tasks: list[str] = field(default_factory=list)

    # Misc
    imports: list[str] = field(default_factory=list)
    include: list[str] = field(default_factory=list)
    timezone: str = "UTC"
    enable_utc: bool = True
    beat_schedule: dict[str, Any] = field(default_factory=dict)

    _explicit: set[str] = field(default_factory=set, repr=False, compare=False)
    #: Celery settings without a counterpart here (``celery_settings.py``): kept, not used
    _celery_only: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)
    #: Counts the settings set since this object was made: what is computed from them may be
    #: kept while it stays the same (a value changed inside a list or dict is not counted).
    _changes: int = field(default=0, repr=False, compare=False)

    def __post_init__(self) -> None:
        for name, var in ENV_VARS.items():
            value = os.environ.get(var)
            if value:
                object.__setattr__(self, name, value)  # not explicit: config objects win

    def __setattr__(self, name: str, value: Any) -> None:
        # ``app.conf.beat_schedul = ...`` is an error as ``update()`` makes it, and a value set
        # this way is converted and wins over config objects as ``update()``'s does.
        if name.startswith("_"):
            object.__setattr__(self, name, value)
            return
        self._check(name)
        if name in CELERY_ONLY:
            self._keep_celery_only(name, value)
            return
        object.__setattr__(self, name, _coerce(name, value))
        self._changed()
        explicit = self.__dict__.get("_explicit")
        if explicit is not None:  # None while the dataclass's __init__ sets the defaults
            explicit.add(name)

    # -- mapping-style access, as Celery's app.conf offers --------------------------------
    def __getitem__(self, name: str) -> Any:
        self._check(name)
        return self.get(name)

    def __setitem__(self, name: str, value: Any) -> None:
        self.update({name: value})

    def __iter__(self) -> Iterator[str]:
        return iter(setting_names())

    def get(self, name: str, default: Any = None) -> Any:
        if name in CELERY_ONLY:
            return self._celery_only.get(name, default)
        return getattr(self, name, default) if name in _NAMES else default

    def __getattr__(self, name: str) -> Any:
        # Only reached for names that are not attributes: Celery's settings set here.
        if name in CELERY_ONLY:
            return self.__dict__.get("_celery_only", {}).get(name)
        raise AttributeError(name)

    def _keep_celery_only(self, name: str, value: Any) -> None:
        if name not in self._celery_only:
            logger.warning("setting %r is Celery's and has no effect in Celeriac", name)
        self._celery_only[name] = value

    def update(self, mapping: Mapping[str, Any] | None = None, /, **kwargs: Any) -> None:
        """Set several settings; unknown names raise :class:`ConfigurationError`."""
        items = {**(dict(mapping) if mapping else {}), **kwargs}
        for name in items:
            self._check(name)
        for name, value in items.items():
            setattr(self, name, value)  # __setattr__ converts it and records it as explicit

    def setdefaults(self, mapping: Mapping[str, Any]) -> None:
        """Set settings that were not set explicitly (config objects and presets use this)."""
        for name in mapping:
            self._check(name)
        for name, value in mapping.items():
            self.set_default(name, value)

    def set_default(self, name: str, value: Any) -> None:
        """Replace a default without making it explicit (config objects may still set it)."""
        self._check(name)
        if name in CELERY_ONLY:
            self._keep_celery_only(name, value)
            return
        if name not in self._explicit:
            object.__setattr__(self, name, _coerce(name, value))
            self._changed()

    def _changed(self) -> None:
        object.__setattr__(self, "_changes", self.__dict__.get("_changes", 0) + 1)

    def as_dict(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in setting_names()}

    @staticmethod
    def _check(name: str) -> None:
        if name not in _NAMES and name not in CELERY_ONLY:
            import difflib  # only for this message

            close = difflib.get_close_matches(name.lower(), _NAMES, n=1, cutoff=0.6)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise ConfigurationError(f"unknown setting {name!r}{hint}")


def _coerce(name: str, value: Any) -> Any:
    if name == "result_expires" and isinstance(value, dt.timedelta):
        return value.total_seconds()
    if name in ("accept_content", "result_accept_content", "imports", "include") and isinstance(
        value, str
    ):
        return [value]
    if name in ("accept_content", "result_accept_content", "imports", "include") and isinstance(
        value, tuple | set | frozenset
    ):
        return list(value)
    return value


def setting_names() -> list[str]:
    return [f.name for f in dataclasses.fields(Settings) if not f.name.startswith("_")]


_NAMES = frozenset(setting_names())


def settings_from_object(obj: Any, namespace: str | None = None) -> dict[str, Any]:
    """Settings held by a module, class, mapping or ``"module"``/``"module:attr"`` path.

    Without a namespace, every public lowercase attribute that is not a module, class or function
    must be a setting. With ``namespace="CELERY"``, only ``CELERY_*`` names are read (Django's
    habit), lowercased without the prefix.
    """
    if isinstance(obj, str):
        obj = _import_object(obj)
    items = dict(obj) if isinstance(obj, Mapping) else {k: getattr(obj, k) for k in dir(obj)}
    found: dict[str, Any] = {}
    prefix = f"{namespace}_" if namespace else None
    for key, value in items.items():
        if key.startswith("_"):
            continue
        if prefix is not None:
            if key.startswith(prefix):
                found[key[len(prefix) :].lower()] = value
            continue
        if not key.islower():
            continue
        # Helpers and imports a config module holds are not settings; a setting may hold a
        # callable (task_routes = route_task).
        if key not in _NAMES and (callable(value) or type(value).__name__ == "module"):
            continue
        found[key] = value
    return found


def _import_object(path: str) -> Any:
    module_name, _, attr = path.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ConfigurationError(f"cannot import config module {module_name!r}: {exc}") from exc
    return getattr(module, attr) if attr else module
