"""One package per technology, chosen by URL scheme: the one place that names them.

Each package (``memory``, ``sqlite``, ``redis``, ``amqp``, ``postgres``, ``memcached``)
holds its connection handling, its options, its broker, result backend and beat store
(those its technology can serve), and its server-side scripts; its
``transport`` module is imported only when a URL asks for it, so ``import celeriac`` imports no
broker client. A new technology is one package plus its lines here.
"""

from __future__ import annotations

import importlib

from celeriac.exceptions import ConfigurationError
from celeriac.transports.base import BackendConfig, Combined, EventConfig, Transport
from celeriac.urls import redact

#: URL scheme -> "module:class".
TRANSPORTS: dict[str, str] = {
    "memory": "celeriac.transports.memory.transport:MemoryTransport",
    "sqlite": "celeriac.transports.sqlite.transport:SQLiteTransport",
    "redis": "celeriac.transports.redis.transport:RedisTransport",
    "rediss": "celeriac.transports.redis.transport:RedisTransport",
    "redis+socket": "celeriac.transports.redis.transport:RedisTransport",
    "sentinel": "celeriac.transports.redis.transport:RedisTransport",
    "amqp": "celeriac.transports.amqp.transport:AMQPTransport",
    "amqps": "celeriac.transports.amqp.transport:AMQPTransport",
    "postgresql": "celeriac.transports.postgres.transport:PostgresTransport",
    "postgres": "celeriac.transports.postgres.transport:PostgresTransport",
    # Celery's spelling of a database result backend
    "db+postgresql": "celeriac.transports.postgres.transport:PostgresTransport",
    # results only: a memcached broker URL is a ConfigurationError saying what to use
    "memcached": "celeriac.transports.memcached.transport:MemcachedTransport",
    "cache+memcached": "celeriac.transports.memcached.transport:MemcachedTransport",
}


#: URL scheme -> "module:class" of the dashboard's task history kept on that server (an SQLite
#: file needs no transport: its store lives in the dashboard package).
HISTORY_STORES: dict[str, str] = {
    "postgresql": "celeriac.transports.postgres.history:PostgresHistory",
    "postgres": "celeriac.transports.postgres.history:PostgresHistory",
}

#: Schemes of result stores that carry no broker: as ``broker_url`` they are a ConfigurationError.
BACKEND_ONLY = frozenset({"memcached", "cache+memcached"})


def scheme_of(url: str) -> str:
    return url.partition("://")[0].lower()


def transport_class(url: str) -> type[Transport]:
    """The transport class for ``url``, without connecting."""
    scheme = scheme_of(url)
    target = TRANSPORTS.get(scheme)
    if target is None:
        known = ", ".join(f"{s}://" for s in sorted(TRANSPORTS))
        raise ConfigurationError(
            f"no transport for URL scheme {scheme!r} in {redact(url)!r}; known: {known}"
        )
    module_name, _, cls_name = target.partition(":")
    cls: type[Transport] = getattr(importlib.import_module(module_name), cls_name)
    return cls


def broker_transport_class(url: str) -> type[Transport]:
    """The transport class for ``broker_url``, refusing a scheme that stores results only."""
    scheme = scheme_of(url)
    if scheme in BACKEND_ONLY:
        raise ConfigurationError(
            f"{scheme}:// stores results only (it keeps no queues and may evict what it holds):"
            f" set broker_url to a sqlite://, redis:// or amqp:// URL and use {redact(url)!r} as"
            " result_backend"
        )
    return transport_class(url)


#: Result backend schemes that name the broker's server in their own spelling: ``rpc://``
#: sends results over the AMQP broker's connection (or the server its URL names).
_ON_BROKER_SERVER = {"rpc": ("amqp", ("amqp", "amqps"))}


def backend_server_url(backend_url: str, broker_url: str) -> str:
    """The URL of the server ``backend_url`` stores on (whose transport hands it out)."""
    scheme = scheme_of(backend_url)
    spec = _ON_BROKER_SERVER.get(scheme)
    if spec is None:
        return backend_url
    server_scheme, broker_schemes = spec
    rest = backend_url.partition("://")[2]
    if rest.split("?", 1)[0].strip("/"):  # names a server: rpc://user:pw@host:5672/vhost
        return f"{server_scheme}://{rest}"
    if scheme_of(broker_url) not in broker_schemes:
        raise ConfigurationError(
            f"{scheme}:// sends results over the {server_scheme}:// broker: set broker_url to "
            f"an {server_scheme}:// URL (or name the server: {scheme}://user:password@host/vhost)"
        )
    return broker_url


def open_transport(url: str) -> Transport:
    """A transport for ``url``; it connects when its parts are first used."""
    return transport_class(url)(url)


__all__ = [
    "BACKEND_ONLY",
    "TRANSPORTS",
    "BackendConfig",
    "Combined",
    "EventConfig",
    "Transport",
    "backend_server_url",
    "broker_transport_class",
    "open_transport",
    "scheme_of",
    "transport_class",
]


def history_store_class(url: str) -> type:
    """The dashboard's history store for ``url`` on a server a transport reaches."""
    target = HISTORY_STORES.get(scheme_of(url))
    if target is None:
        raise ConfigurationError(
            f"dashboard history store {redact(url)} is not supported; use sqlite:///path/to/file.db"
            " or postgresql://user@host/db"
        )
    module, _, name = target.partition(":")
    cls: type = getattr(importlib.import_module(module), name)
    return cls
