"""Result backends, chosen by URL scheme and imported only when asked for."""

from __future__ import annotations

import importlib
from collections.abc import Sequence
from typing import Any

from celeriac.backends.base import ChordPart, DisabledBackend, EncodedResult, ResultBackend
from celeriac.exceptions import ConfigurationError

BACKENDS: dict[str, str] = {
    "memory": "celeriac.transports.memory.backend:MemoryBackend",
    "sqlite": "celeriac.transports.sqlite.backend:SQLiteBackend",
    "redis": "celeriac.transports.redis.backend:RedisBackend",
    "rediss": "celeriac.transports.redis.backend:RedisBackend",
    "redis+socket": "celeriac.transports.redis.backend:RedisBackend",
    "sentinel": "celeriac.transports.redis.backend:RedisBackend",
    "rpc": "celeriac.transports.amqp.rpc_backend:RPCBackend",
}


def create_backend(
    url: str | None,
    *,
    serializer: str = "json",
    accept: Sequence[str] = ("json",),
    expires: float | None = 86400.0,
    transport_options: dict[str, Any] | None = None,
) -> ResultBackend:
    if not url or url in ("disabled", "disabled://"):
        return DisabledBackend()
    scheme = url.partition("://")[0].lower()
    target = BACKENDS.get(scheme)
    if target is None:
        known = ", ".join(f"{s}://" for s in sorted(BACKENDS))
        raise ConfigurationError(
            f"no result backend for URL scheme {scheme!r} in {url!r}; known: {known}"
        )
    module_name, _, cls_name = target.partition(":")
    cls = getattr(importlib.import_module(module_name), cls_name)
    backend: ResultBackend = cls(
        url,
        serializer=serializer,
        accept=accept,
        expires=expires,
        transport_options=transport_options,
    )
    return backend


__all__ = [
    "BACKENDS",
    "ChordPart",
    "DisabledBackend",
    "EncodedResult",
    "ResultBackend",
    "create_backend",
]
