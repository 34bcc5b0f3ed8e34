"""datetime, Decimal, UUID and bytes cross between Celery and Celeriac as themselves.

Both sides encode them with kombu's ``{"__type__": ..., "__value__": ...}`` markers and decode
them back: a Celeriac client's arguments reach a Celery worker as the types they were, the
Celery worker's result comes back to the Celeriac client decoded, and the same holds the other
way round (a Celery client, a Celeriac worker).
"""

from __future__ import annotations

import datetime as dt
import decimal
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests import redis_support

from .redis_env import RedisEnv

pytestmark = pytest.mark.redis

VALUES = [
    dt.datetime(2026, 3, 29, 1, 30, 15, 250000, tzinfo=dt.timezone.utc),
    decimal.Decimal("12.3400"),
    uuid.UUID("12345678-1234-5678-1234-567812345678"),
    b"raw bytes",
    b"\xff\xfe not utf-8",
]
TYPES = ["datetime", "Decimal", "UUID", "bytes", "bytes"]


@pytest.fixture
def env(tmp_path: Path) -> Iterator[RedisEnv]:
    e = RedisEnv(tmp_path)
    e.env["TYPED_QUEUE"] = f"typed-{uuid.uuid4().hex[:8]}"
    e.env["PYTHONPATH"] = f"{Path(__file__).parent}:{e.env['PYTHONPATH']}"
    try:
        yield e
    finally:
        e.close()


def _celeriac_client(env: RedisEnv) -> Any:
    from celeriac import Celeriac

    return Celeriac(
        "typed_client",
        broker_url=env.url,
        result_backend=env.url,
        task_default_queue=env.env["TYPED_QUEUE"],
    )


def test_celeriac_client_and_celery_worker(env: RedisEnv) -> None:
    argv = [sys.executable, "-m", "celery", "-A", "typed_celery", "worker", "-P", "solo"]
    argv += ["-l", "info", "-n", "typed@e2e", "--without-mingle", "--without-gossip"]
    env._spawn("celery", [*argv, "--without-heartbeat"], b" ready.")
    app = _celeriac_client(env)
    try:
        types, values = app.send_task("typed.describe", VALUES).get(timeout=20)
    finally:
        app.close()
    assert (types, values) == (TYPES, VALUES)


def test_celery_client_and_celeriac_worker(env: RedisEnv, monkeypatch: pytest.MonkeyPatch) -> None:
    argv = [sys.executable, "-m", "celeriac", "-A", "typed_celeriac", "worker", "-P", "solo"]
    env._spawn("celeriac", [*argv, "-n", "typed@e2e"], b" ready:")
    monkeypatch.setenv("INTEROP_REDIS_URL", redis_support.base_url())
    monkeypatch.setenv("INTEROP_PREFIX", env.prefix)
    monkeypatch.setenv("TYPED_QUEUE", env.env["TYPED_QUEUE"])
    sys.modules.pop("typed_celery", None)
    monkeypatch.syspath_prepend(str(Path(__file__).parent))
    import typed_celery

    try:
        result = typed_celery.app.send_task("typed.describe", VALUES)
        types, values = result.get(timeout=20)
    finally:
        typed_celery.app.close()
        sys.modules.pop("typed_celery", None)
    assert (types, values) == (TYPES, VALUES)
