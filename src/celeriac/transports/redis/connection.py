"""Redis connections for the broker and the result backend, built from Celery-style URLs.

Imported only when a ``redis://`` (``rediss://``, ``redis+socket://``, ``sentinel://``) URL is
used, so ``import celeriac`` never imports redis-py.

URLs understood:

* ``redis://[[user]:password@]host[:port][/db]`` and ``rediss://...`` (TLS; ``ssl_cert_reqs``
  and friends as query parameters, as redis-py reads them);
* ``redis+socket:///path/to/redis.sock?virtual_host=db`` (kombu's spelling; ``db=`` works too);
* ``sentinel://host:26379[;sentinel://host2:26379]/db`` with the ``master_name`` option.

``global_keyprefix`` (a transport option, or a query parameter of the URL) is put in front of
every key and channel, as kombu and Celery do.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl, unquote, urlencode, urlsplit

import redis
from redis.backoff import ExponentialBackoff
from redis.retry import Retry

from celeriac.exceptions import ConfigurationError

#: Errors after which a command may be sent again on a new connection.
CONNECTION_ERRORS: tuple[type[Exception], ...] = (
    redis.ConnectionError,
    redis.TimeoutError,
)

_OURS = ("global_keyprefix", "master_name")
#: Options that shape a client (the rest are the broker's, the backend's or a key prefix).
_CLIENT_OPTIONS = (
    "socket_timeout",
    "socket_connect_timeout",
    "health_check_interval",
    "retry_cap",
    "max_retries",
    "master_name",
    "sentinel_kwargs",
)


@dataclass(slots=True)
class RedisTarget:
    client: redis.Redis
    prefix: str


def _retry(options: dict[str, Any]) -> Retry:
    # About 8 s of reconnect attempts (50 ms doubling, capped at 2 s) before an error surfaces:
    # long enough to ride out a Redis restart, short enough that a caller is not left hanging.
    return Retry(
        ExponentialBackoff(cap=float(options.get("retry_cap", 2.0)), base=0.05),
        int(options.get("max_retries", 8)),
        supported_errors=CONNECTION_ERRORS,
    )


def _common(options: dict[str, Any]) -> dict[str, Any]:
    return {
        "socket_timeout": float(options.get("socket_timeout", 10.0)),
        "socket_connect_timeout": float(options.get("socket_connect_timeout", 5.0)),
        "health_check_interval": float(options.get("health_check_interval", 25.0)),
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
        where = f"{parts.hostname or 'localhost'}:{parts.port or 6379}/{db}"
    else:
        where = f"{parts.netloc}{parts.path}"
    return f"{scheme}://{parts.username or ''}:{parts.password or ''}@{where}?{query}"


def client_key(url: str, options: dict[str, Any]) -> tuple[str, ...]:
    """Options equal here can share one client (and its connection pool)."""
    query = dict(parse_qsl(urlsplit(url).query))
    merged = {**{k: query[k] for k in _OURS if k in query}, **options}
    return tuple(repr(merged.get(k)) for k in _CLIENT_OPTIONS)


def connect(url: str, options: dict[str, Any] | None = None) -> RedisTarget:
    """A client (with its own connection pool) and the key prefix for ``url``."""
    options = dict(options or {})
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    query = dict(parse_qsl(parts.query))
    ours = {k: query.pop(k) for k in _OURS if k in query}
    options = {**ours, **options}
    prefix = str(options.get("global_keyprefix") or "")
    common = _common(options)
    try:
        if scheme in ("redis", "rediss"):
            clean = parts._replace(query=urlencode(query)).geturl()
            client = redis.Redis.from_url(clean, socket_keepalive=True, **common)
        elif scheme in ("redis+socket", "unix", "socket"):
            db = int(query.pop("virtual_host", query.pop("db", 0)) or 0)
            client = redis.Redis(
                unix_socket_path=unquote(parts.path),
                db=db,
                password=unquote(parts.password) if parts.password else None,
                **common,
            )
        elif scheme == "sentinel":
            client = _sentinel(url, options, common)
        else:
            raise ConfigurationError(f"not a Redis URL: {url!r}")
    except ValueError as exc:
        raise ConfigurationError(f"bad Redis URL {url!r}: {exc}") from exc
    return RedisTarget(client, prefix)


def _sentinel(url: str, options: dict[str, Any], common: dict[str, Any]) -> redis.Redis:
    from redis.sentinel import Sentinel

    master = options.get("master_name")
    if not master:
        raise ConfigurationError(
            f"{url!r}: a sentinel:// URL needs the 'master_name' transport option"
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
        sentinel_kwargs=dict(options.get("sentinel_kwargs") or {}),
        socket_timeout=common["socket_timeout"],
    )
    client: redis.Redis = sentinel.master_for(  # type: ignore[no-untyped-call]
        str(master), db=db, password=password, **common
    )
    return client
