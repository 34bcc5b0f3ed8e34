"""The public surface is deliberate: pinned here, and cheap to import."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import celeriac

PUBLIC = [
    "AsyncResult",
    "Broadcast",
    "Celeriac",
    "CeleriacError",
    "Celery",
    "ConfigurationError",
    "EagerResult",
    "Exchange",
    "GroupResult",
    "Ignore",
    "NotRegistered",
    "Queue",
    "Reject",
    "Request",
    "Retry",
    "Signature",
    "SoftTimeLimitExceeded",
    "Task",
    "TimeLimitExceeded",
    "TimeoutError",
    "__version__",
    "chain",
    "chord",
    "group",
    "signature",
    "states",
]
BROKER_CLIENTS = ["redis", "psycopg", "aio_pika"]


def test_all_is_pinned() -> None:
    assert sorted(celeriac.__all__) == PUBLIC
    for name in PUBLIC:
        assert getattr(celeriac, name) is not None, name


def test_import_loads_no_broker_client(tmp_path: Path) -> None:
    # Importable stand-ins, so the check means the same whether or not the clients are installed.
    for name in BROKER_CLIENTS:
        (tmp_path / name).mkdir()
        (tmp_path / name / "__init__.py").write_text("")
    code = (
        "import json, sys\n"
        "import celeriac\n"
        f"after_import = [m for m in {BROKER_CLIENTS!r} if m in sys.modules]\n"
        "app = celeriac.Celeriac('proj', broker_url='memory://')\n"
        "app.broker, app.backend\n"
        f"after_memory_app = [m for m in {BROKER_CLIENTS!r} if m in sys.modules]\n"
        "import redis, psycopg, aio_pika  # the stand-ins are there to be found\n"
        "print(json.dumps([after_import, after_memory_app]))\n"
    )
    env = {**os.environ, "PYTHONPATH": str(tmp_path)}
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=60
    )
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout) == [[], []]
