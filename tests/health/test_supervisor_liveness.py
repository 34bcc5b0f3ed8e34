"""/livez of a prefork worker follows its supervisor's loop: held up (its lock taken, as by a
thread stuck inside it), the loop stops turning and /livez fails; let go, it passes again."""

from __future__ import annotations

import threading
import time

import pytest

from celeriac import Celeriac
from celeriac.worker import Worker
from tests.e2e.conftest import wait_for
from tests.e2e.observe_support import get


@pytest.mark.timeout(60)
def test_livez_fails_while_the_supervisor_loop_is_held_up(tmp_path):
    app = Celeriac(
        "sup",
        broker_url=f"sqlite:///{tmp_path / 'b.db'}",
        worker_health_port=0,
        worker_http_host="127.0.0.1",
        worker_liveness_timeout=1.0,
        worker_enable_remote_control=False,
    )
    worker = Worker(app, pool="prefork", concurrency=1, install_signal_handlers=False)
    thread = threading.Thread(target=worker.start, daemon=True)
    thread.start()
    try:
        assert worker.ready.wait(20)
        supervisor = worker._supervisor
        assert supervisor is not None
        assert supervisor.monitor is not None
        [server] = supervisor.monitor.servers
        port = server.port
        wait_for(lambda: get(port, "/readyz")[0] == 200, 10, "ready")
        assert get(port, "/livez")[0] == 200
        with supervisor._lock:
            held = time.monotonic()
            wait_for(lambda: get(port, "/livez")[0] == 503, 3, "/livez to fail")
            assert time.monotonic() - held > 0.7  # 1 s after the last turn (0.25 s apart)
        wait_for(lambda: get(port, "/livez")[0] == 200, 3, "/livez to pass again")
    finally:
        worker.stop()
        thread.join(20)
    assert not thread.is_alive()
