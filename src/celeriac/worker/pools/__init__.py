"""Execution pools: where tasks run. One module per pool, chosen by ``--pool``."""

from __future__ import annotations

import importlib

from celeriac.exceptions import ConfigurationError
from celeriac.worker.pools.base import OutcomeCallback, Pool

POOLS: dict[str, str] = {
    "prefork": "celeriac.worker.pools.prefork:PreforkPool",
    "threads": "celeriac.worker.pools.threads:ThreadPool",
    "solo": "celeriac.worker.pools.solo:SoloPool",
    "asyncio": "celeriac.worker.pools.asyncio:AsyncioPool",
}


def pool_class(name: str) -> type[Pool]:
    target = POOLS.get(name)
    if target is None:
        raise ConfigurationError(f"unknown pool {name!r}; choose one of: {', '.join(POOLS)}")
    module_name, _, cls_name = target.partition(":")
    cls: type[Pool] = getattr(importlib.import_module(module_name), cls_name)
    return cls


__all__ = ["POOLS", "OutcomeCallback", "Pool", "pool_class"]
