"""A prefork worker imports only what its transport and features need (issue 19's memory target).

Every module a worker process imports stays resident in it, and a prefork child inherits all
the supervisor imported before the fork: a worker on SQLite with default settings must not
carry other transports' clients, the dashboard, metrics, tracing, beat or an HTTP stack.
A real ``celeriac worker -P prefork -c 2`` runs in a subprocess; the supervisor reports its
modules once ready, a child those it has after running a task.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).parent

#: Not imported by a default prefork worker on sqlite:// (prefixes: a package and its modules).
ABSENT = [
    # other transports' clients and our modules for them
    "redis",
    "hiredis",
    "amqp",
    "psycopg",
    "pymemcache",
    "celeriac.transports.redis",
    "celeriac.transports.amqp",
    "celeriac.transports.postgres",
    "celeriac.transports.memcached",
    # features that are off: dashboard, metrics, tracing, beat, the health server
    "starlette",
    "uvicorn",
    "jinja2",
    "prometheus_client",
    "opentelemetry",
    "celeriac.dashboard",
    "celeriac.beat.api",
    "celeriac.beat.scheduler",
    "celeriac.beat.schedules",
    "celeriac.beat.store",
    "cronsim",
    "zoneinfo",
    "celeriac.events.receiver",
    "celeriac.events.state",
    # CLI commands other than worker, and what they would bring
    "rich",
    "celeriac.cli.beat",
    "celeriac.cli.dashboard",
    "celeriac.cli.events",
    "celeriac.cli.health",
    "celeriac.health.probe",
    # standard library the worker does not use here: asyncio (no async task, no asyncio
    # pool), an HTTP stack (no health or metrics port), OpenSSL (no TLS, no signing)
    "asyncio",
    "http",
    "email",
    "ssl",
    "hashlib",
    "hmac",
    "decimal",
    # the prefork pool forks its children itself and shares memory with them through mmap
    "multiprocessing",
    # msgpack is installed (a dev dependency) but no message here is msgpack
    "msgpack",
    # not difflib: click imports it while parsing any short option (-c, -P)
]


def _present(modules: list[str]) -> list[str]:
    return sorted(name for name in ABSENT for m in modules if m == name or m.startswith(name + "."))


def test_prefork_worker_on_sqlite_imports_only_what_it_needs(tmp_path: Path) -> None:
    out = tmp_path / "supervisor.json"
    env = {
        **os.environ,
        "CELERIAC_BROKER_URL": f"sqlite:///{tmp_path / 'broker.sqlite3'}",
        "FOOTPRINT_OUT": str(out),
        "PYTHONPATH": f"{HERE}{os.pathsep}{os.environ.get('PYTHONPATH', '')}",
    }
    env.pop("OTEL_PYTHON_TRACER_PROVIDER", None)
    cmd = [sys.executable, "-m", "celeriac", "-A", "footprint_tasks:app", "worker"]
    worker = subprocess.Popen(
        [*cmd, "-P", "prefork", "-c", "2", "-l", "warning"],
        env=env,
        cwd=tmp_path,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )
    try:
        client = subprocess.run(
            [
                sys.executable,
                "-c",
                "import json, footprint_tasks as t; "
                "print(json.dumps(t.modules.delay().get(timeout=60)))",
            ],
            env=env,
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=90,
        )
        assert client.returncode == 0, client.stderr
        child = json.loads(client.stdout)
        deadline = time.monotonic() + 30
        while not out.exists():
            assert worker.poll() is None, worker.stderr.read() if worker.stderr else ""
            assert time.monotonic() < deadline, "the supervisor never reported ready"
            time.sleep(0.02)
        supervisor = json.loads(out.read_text())
    finally:
        os.killpg(worker.pid, signal.SIGTERM)
        try:
            worker.wait(20)
        except subprocess.TimeoutExpired:
            os.killpg(worker.pid, signal.SIGKILL)
            worker.wait(5)
    # The report itself is sound: both processes ran Celeriac's prefork and SQLite code.
    for modules in (supervisor, child):
        assert "celeriac.transports.sqlite.broker" in modules
    assert "celeriac.worker.supervisor" in supervisor
    assert "celeriac.worker.pools.child" in child
    assert _present(supervisor) == []
    assert _present(child) == []
