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
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl, unquote, urlencode, urlsplit

import redis
from redis.backoff import ExponentialBackoff

from celeriac.exceptions import ConfigurationError
from celeriac.transports.redis.deadline import DeadlineRetry, bound
from celeriac.transports.redis.held import HeldConnections
from celeriac.transports.redis.options import RedisConnectionOptions
from celeriac.urls import mask_urls, redact

#: Errors after which a command may be sent again on a new connection.
CONNECTION_ERRORS: tuple[type[Exception], ...] = (
    redis.ConnectionError,
    redis.TimeoutError,
)

_OURS = ("global_keyprefix", "master_name")


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
