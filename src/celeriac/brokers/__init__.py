"""Brokers, chosen by URL scheme. Each lives in its own module, imported only when asked for."""

from __future__ import annotations

import importlib
from typing import Any

from celeriac.brokers.base import Broker, DeadLetter, Delivery
from celeriac.exceptions import ConfigurationError

#: URL scheme -> "module:class"; a new broker is one module plus one line here.
BROKERS: dict[str, str] = {
    "memory": "celeriac.transports.memory.broker:MemoryBroker",
    "sqlite": "celeriac.transports.sqlite.broker:SQLiteBroker",
    "redis": "celeriac.transports.redis.broker:RedisBroker",
    "rediss": "celeriac.transports.redis.broker:RedisBroker",
    "redis+socket": "celeriac.transports.redis.broker:RedisBroker",
    "sentinel": "celeriac.transports.redis.broker:RedisBroker",
    "amqp": "celeriac.transports.amqp.broker:AMQPBroker",
    "amqps": "celeriac.transports.amqp.broker:AMQPBroker",
}


def broker_class(url: str) -> type[Broker]:
    """The broker class for ``url``, without connecting."""
    scheme = url.partition("://")[0].lower()
    target = BROKERS.get(scheme)
    if target is None:
        known = ", ".join(f"{s}://" for s in sorted(BROKERS))
        raise ConfigurationError(f"no broker for URL scheme {scheme!r} in {url!r}; known: {known}")
    module_name, _, cls_name = target.partition(":")
    cls: type[Broker] = getattr(importlib.import_module(module_name), cls_name)
    return cls


def create_broker(url: str, transport_options: dict[str, Any] | None = None) -> Broker:
    return broker_class(url)(url, transport_options)  # type: ignore[call-arg]


__all__ = ["BROKERS", "Broker", "DeadLetter", "Delivery", "broker_class", "create_broker"]
