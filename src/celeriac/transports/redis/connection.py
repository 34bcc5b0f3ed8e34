"""Redis connections for the broker and the result backend, built from Celery-style URLs.

Imported only when a ``redis://`` (``rediss://``, ``redis+socket://``, ``sentinel://``) URL is
used, so ``import celeriac`` never imports redis-py.

URLs understood:

* ``redis://[[user]:password@]host[:port][/db]`` and ``rediss://...`` (TLS; ``ssl_cert_reqs``
  and friends as query parameters, as redis-py reads them);
* ``redis+socket:///path/to/redis.sock?virtual_host=db`` (kombu's spelling; ``db=`` works too);
* ``sentinel://host:26379[;sentinel://host2:26379]/db`` with the ``master_name`` option.

``global_keyprefix`` (a transport option, or a query parameter of the URL) is put in front of
every key and channel, as kombu and Celery do. The options read here are
:class:`.options.RedisConnectionOptions`.
"""

from __future__ import annotations

import dataclasses
import os
import threading
import weakref
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl, unquote, urlencode, urlsplit

import redis
from redis.backoff import ExponentialBackoff

from celeriac.exceptions import ConfigurationError
from celeriac.transports.redis.deadline import DeadlineRetry, bound
from celeriac.transports.redis.options import RedisConnectionOptions
from celeriac.urls import mask_urls, redact

#: Errors after which a command may be sent again on a new connection.
CONNECTION_ERRORS: tuple[type[Exception], ...] = (
    redis.ConnectionError,
    redis.TimeoutError,
)

_OURS = ("global_keyprefix", "master_name")


#: Connections held per pool at most (and at most half its ``max_connections``).
HELD_MAX = 32


class HeldConnections:
    """A client per thread over ``client``'s pool, each keeping one connection between its
    thread's commands.

    redis-py takes a connection from the pool for each command and gives it back after: a
    lock, a pid check and a ``poll()`` (is anything unread on it?) every time, ~12 us of CPU a
    command here (``delay()``: 131.6 against 143.8 us, measured). The hot paths (a publish, a
    worker's fetch, ack and wait, a result read) run on the calling thread's client instead;
    pipelines and pub/sub keep using the pool. A thread keeps its connection until it ends,
    when it goes back to the pool. At most :data:`HELD_MAX`, and half the pool's
    ``max_connections``, are held: past that a thread takes turns on the pool as before, so
    threads that hold one never starve it. A connection redis-py drops after an error is
    opened again on the next command, as from the pool; a forked child makes its own.
    """

    __slots__ = ("_count", "_local", "shared")

    def __init__(self, client: redis.Redis) -> None:
        self.shared = client
        self._local = threading.local()
        self._count = _Count()

    def command(self) -> HeldCommand:
        """``with conns.command() as client:`` one command (or a few, one after the other) on
        this thread's client. It connects on first use: enter it where a Redis error is
        handled, within the caller's deadline.

        Entered again on a thread while a command of its own runs (from a signal handler, a
        finalizer), it runs on a connection the pool lends: two commands on one socket would
        read each other's replies."""
        local = self._local
        if getattr(local, "busy", False):
            return HeldCommand(self.shared, None)
        return HeldCommand(self.get(), local)

    def get(self) -> redis.Redis:
        """This thread's client (outside a :meth:`command`, for tests and inspection)."""
        local = self._local
        pid = os.getpid()
        if getattr(local, "pid", None) != pid:
            # (A client inherited through fork is left alone: redis-py gives nothing back to
            # a pool of another process, and closes no socket it did not open.)
            local.client, local.pid = self._take(pid), pid
        client: redis.Redis = local.client
        return client

    def _take(self, pid: int) -> redis.Redis:
        pool = self.shared.connection_pool
        cap = min(HELD_MAX, getattr(pool, "max_connections", HELD_MAX * 2) // 2)
        if not self._count.take(cap):
            return self.shared
        try:
            held = redis.Redis(connection_pool=pool, single_connection_client=True)
        except BaseException:
            self._count.give_back(pid)
            raise
        # The count only: a finalizer holding this object would keep it, its thread-local
        # clients and their pool alive for as long as the process runs.
        weakref.finalize(held, self._count.give_back, pid)
        return held


class _Count:
    """How many clients one :class:`HeldConnections`' threads hold in this process."""

    __slots__ = ("__weakref__", "lock", "n", "pid")

    def __init__(self) -> None:
        self.reset()
        _COUNTS.add(self)
        _reset_at_fork()

    def reset(self) -> None:
        # reentrant: a finalizer (give_back) may run in a collection on a thread holding it
        self.lock, self.n, self.pid = threading.RLock(), 0, os.getpid()

    def take(self, cap: int) -> bool:
        with self.lock:
            if self.n >= cap:
                return False
            self.n += 1
            return True

    def give_back(self, pid: int) -> None:
        # A client taken before a fork, freed in the child (its other threads' clients are,
        # as the fork happens): not this process's, and the lock may be one a parent's
        # thread held at the fork; reset() gives the child its own.
        if pid != self.pid or pid != os.getpid():
            return
        with self.lock:
            self.n -= 1


_COUNTS: weakref.WeakSet[_Count] = weakref.WeakSet()
_FORK_HOOK: list[bool] = []


def _reset_at_fork() -> None:
    """Once per process, on first use (not at import): a child starts every count afresh."""
    if not _FORK_HOOK:
        _FORK_HOOK.append(True)
        os.register_at_fork(after_in_child=_after_fork)


def _after_fork() -> None:
    for count in list(_COUNTS):
        count.reset()


class HeldCommand:
    """A command on a held connection; see :meth:`HeldConnections.command`.

    A connection lent by the pool is checked for unread data when it is lent; a held one is
    not. redis-py drops a connection when a send or a read fails, but an exception raised
    between the two (a soft time limit or another asynchronous exception in a task's thread,
    a signal handler's) would leave the reply unread, and the thread's next command would
    read it as its own. So a command that ends in anything but a reply Redis sent (an error
    reply included) drops the connection: the next one opens another.
    """

    __slots__ = ("_local", "client")

    def __init__(self, client: redis.Redis, local: threading.local | None) -> None:
        self.client = client
        self._local = local  # None: a command on the pool, nothing to keep in step

    def __enter__(self) -> redis.Redis:
        if self._local is not None:
            self._local.busy = True
        return self.client

    def __exit__(self, kind: type[BaseException] | None, *rest: object) -> None:
        local = self._local
        if local is None:
            return
        local.busy = False
        if kind is not None and not issubclass(kind, redis.ResponseError):
            conn = self.client.connection
            if conn is not None:
                conn.disconnect()  # type: ignore[no-untyped-call]


@dataclass(slots=True)
class RedisTarget:
    """A client (shared, pooled; and one per thread, :attr:`conns`) and the key prefix."""

    conns: HeldConnections
    prefix: str

    @property
    def client(self) -> redis.Redis:
        return self.conns.shared


def _retry(options: RedisConnectionOptions) -> DeadlineRetry:
    # About 8 s of reconnect attempts (50 ms doubling, capped at 2 s) before an error surfaces:
    # long enough to ride out a Redis restart. A caller's deadline cuts them short (deadline.py).
    return DeadlineRetry(
        ExponentialBackoff(cap=options.retry_cap, base=0.05),
        options.max_retries,
        supported_errors=CONNECTION_ERRORS,
    )


def _common(options: RedisConnectionOptions) -> dict[str, Any]:
    return {
        "socket_timeout": options.socket_timeout,
        "socket_connect_timeout": options.socket_connect_timeout,
        "health_check_interval": options.health_check_interval,
        "retry": _retry(options),
        "retry_on_error": list(CONNECTION_ERRORS),
    }


def server_key(url: str) -> str:
    """The server and database ``url`` names: credentials, host, port, db (or socket path),
    TLS settings; not the key prefix, which only shapes key names."""
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    query = sorted((k, v) for k, v in parse_qsl(parts.query) if k not in _OURS)
    if scheme in ("redis", "rediss"):
        db = parts.path.strip("/") or "0"
        try:
            port = parts.port or 6379
        except ValueError as exc:  # a port that is not a number
            raise ConfigurationError(f"bad Redis URL {redact(url)!r}: {exc}") from exc
        where = f"{parts.hostname or 'localhost'}:{port}/{db}"
    else:
        where = f"{parts.netloc}{parts.path}"
    return f"{scheme}://{parts.username or ''}:{parts.password or ''}@{where}?{query}"


def client_key(url: str, options: RedisConnectionOptions) -> tuple[str, ...]:
    """Equal for a URL and options that can share one client (and its connection pool): all
    but the key prefix, which only shapes key names."""
    query = dict(parse_qsl(urlsplit(url).query))
    master = _first(options.master_name, query.get("master_name"))
    shaping = [
        repr(getattr(options, f.name))
        for f in dataclasses.fields(RedisConnectionOptions)
        if f.name not in ("global_keyprefix", "master_name")
    ]
    return (repr(master), *shaping)


def connect(url: str, options: RedisConnectionOptions | None = None) -> RedisTarget:
    """A client (with its own connection pool) and the key prefix for ``url``."""
    options = options or RedisConnectionOptions()
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    query = dict(parse_qsl(parts.query))
    ours = {k: query.pop(k) for k in _OURS if k in query}
    # The options win over the URL's query parameters.
    prefix = _first(options.global_keyprefix, ours.get("global_keyprefix")) or ""
    master = _first(options.master_name, ours.get("master_name"))
    common = _common(options)
    try:
        if scheme in ("redis", "rediss"):
            clean = parts._replace(query=urlencode(query)).geturl()
            client = redis.Redis.from_url(
                clean, socket_keepalive=options.socket_keepalive, **common
            )
        elif scheme in ("redis+socket", "unix", "socket"):
            db = int(query.pop("virtual_host", query.pop("db", 0)) or 0)
            client = redis.Redis(
                unix_socket_path=unquote(parts.path),
                db=db,
                password=unquote(parts.password) if parts.password else None,
                **common,
            )
        elif scheme == "sentinel":
            client = _sentinel(url, master, options, common)
        else:
            raise ConfigurationError(f"not a Redis URL: {redact(url)!r}")
    except ValueError as exc:
        raise ConfigurationError(f"bad Redis URL {redact(url)!r}: {mask_urls(str(exc))}") from exc
    return RedisTarget(HeldConnections(bound(client)), prefix)


def _first(option: str | None, query: str | None) -> str | None:
    return option if option is not None else query


def _sentinel(
    url: str, master: str | None, options: RedisConnectionOptions, common: dict[str, Any]
) -> redis.Redis:
    from redis.sentinel import Sentinel

    if not master:
        raise ConfigurationError(
            f"{redact(url)!r}: a sentinel:// URL needs the 'master_name' transport option"
        )
    hosts: list[tuple[str, int]] = []
    db, password = 0, None
    for part in url.split(";"):
        p = urlsplit(part.strip())
        hosts.append((p.hostname or "127.0.0.1", p.port or 26379))
        if p.path.strip("/"):
            db = int(p.path.strip("/"))
        password = p.password or password
    sentinel = Sentinel(  # type: ignore[no-untyped-call]
        hosts,
        sentinel_kwargs=dict(options.sentinel_kwargs),
        socket_timeout=common["socket_timeout"],
    )
    client: redis.Redis = sentinel.master_for(  # type: ignore[no-untyped-call]
        str(master), db=db, password=password, **common
    )
    return client
