"""/livez and /readyz of an in-process worker (threads pool, memory broker), and the exit
codes of ``celeriac health``."""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Iterator

import pytest
from click.testing import CliRunner

from celeriac import Celeriac
from celeriac.cli.main import cli
from celeriac.worker import Worker
from tests.e2e.conftest import wait_for
from tests.e2e.observe_support import get


@pytest.fixture
def worker() -> Iterator[Worker]:
    app = Celeriac(
        "probes",
        broker_url="memory://",
        worker_health_port=0,
        worker_http_host="127.0.0.1",
        worker_liveness_timeout=1.0,
    )

    @app.task(name="probe.sleep")
    def sleep(seconds: float) -> float:
        time.sleep(seconds)
        return seconds

    w = Worker(app, pool="threads", concurrency=1, install_signal_handlers=False)
    thread = threading.Thread(target=w.start, daemon=True)
    thread.start()
    assert w.ready.wait(10)
    try:
        yield w
    finally:
        w.stop()
        thread.join(10)


def port_of(worker: Worker) -> int:
    assert worker._monitor is not None
    [server] = worker._monitor.servers
    return server.port


def health_of_app() -> int:
    sys.modules.pop("tests.health.probe_app", None)  # it reads the port as it is imported
    return CliRunner().invoke(cli, ["-A", "tests.health.probe_app:app", "health"]).exit_code


def health(*args: str) -> int:
    return CliRunner().invoke(cli, ["health", *args]).exit_code


def test_livez_fails_while_the_consumer_is_wedged_and_recovers(worker):
    port = port_of(worker)
    wait_for(lambda: get(port, "/readyz") == (200, "ready\n"), 5, "ready")
    assert get(port, "/livez")[0] == 200
    assert health("--port", str(port)) == 0
    assert health("--port", str(port), "--live") == 0

    # Wedge the consumer: its lock held (as by a deadlocked thread) for longer than the
    # liveness timeout (1 s here).
    cond = worker.consumer.inflight.cond
    with cond:
        wedged = time.monotonic()
        wait_for(lambda: get(port, "/livez")[0] == 503, 3, "/livez to fail")
        # Not before the timeout (1 s) since the last beat, which was at most one watch
        # interval (0.5 s) before the wedge.
        assert time.monotonic() - wedged > 0.5
        status, body = get(port, "/livez")
        assert status == 503 and body.startswith("wedged: the worker's loop last turned")
        assert health("--port", str(port), "--live") == 1
    wait_for(lambda: get(port, "/livez")[0] == 200, 3, "/livez to pass again")
    assert health("--port", str(port), "--live") == 0


def test_a_long_task_does_not_fail_livez(worker):
    port = port_of(worker)
    result = worker.app.send_task("probe.sleep", (1.6,))
    wait_for(lambda: worker.consumer.inflight.unfinished == 1, 5, "the task to start")
    deadline = time.monotonic() + 1.4  # past the 1 s liveness timeout, while it runs
    while time.monotonic() < deadline:
        assert get(port, "/livez")[0] == 200
        time.sleep(0.1)
    assert result.get(timeout=5) == 1.6


def test_health_reads_the_port_from_the_apps_settings(worker, monkeypatch):
    monkeypatch.setenv("PROBE_HEALTH_PORT", str(port_of(worker)))
    assert health_of_app() == 0


def test_readyz_fails_once_the_worker_stops_consuming(worker):
    port = port_of(worker)
    wait_for(lambda: get(port, "/readyz")[0] == 200, 5, "ready")
    worker._stopping = True  # what a warm shutdown sets first
    assert get(port, "/readyz") == (503, "not ready: not consuming\n")
    assert health("--port", str(port)) == 1
    worker._stopping = False


def test_health_exit_codes_without_a_worker():
    import socket

    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    result = CliRunner().invoke(cli, ["health", "--port", str(port)])
    assert result.exit_code == 1
    assert f"no answer from 127.0.0.1:{port}" in result.output
    # No port given and none configured: a usage error (2), not a false "healthy".
    assert health() == 2
