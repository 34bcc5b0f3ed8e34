"""An app for the secrets tests: its broker URL (with a password) comes from the environment."""

from __future__ import annotations

import os

from celeriac import Celeriac

_url = os.environ.get("CELERIAC_BROKER_URL", "")
# An unreachable Redis fails at once rather than after the usual ~8 s of reconnecting.
_fast = {"max_retries": 0, "socket_connect_timeout": 1}
_backend = os.environ.get("CELERIAC_RESULT_BACKEND", "")
app = Celeriac(
    "secret_tasks",
    broker_transport_options=_fast if _url.startswith("redis") else {},
    result_backend_transport_options=_fast if _backend.startswith("redis") else {},
)


@app.task(name="secret_tasks.add")
def add(x: int, y: int) -> int:
    return x + y
