"""``worker -B``: a beat thread inside a worker process sends tasks that the worker runs."""

from __future__ import annotations

import threading
import time

from celeriac import Celeriac
from celeriac.beat.scheduler import start_embedded_beat
from celeriac.worker import Worker


def test_embedded_beat_feeds_a_worker_in_the_same_process() -> None:
    app = Celeriac("embedded", broker_url="memory://", result_backend=None)
    runs: list[float] = []

    @app.task(name="embedded.tick")
    def tick() -> None:
        runs.append(time.time())

    app.conf.beat_schedule = {"fast": {"task": "embedded.tick", "schedule": 0.2}}
    worker = Worker(app, pool="threads", concurrency=1, install_signal_handlers=False)
    thread = threading.Thread(target=worker.start, daemon=True)
    thread.start()
    assert worker.ready.wait(10)
    beat = start_embedded_beat(app)
    try:
        deadline = time.monotonic() + 10
        while len(runs) < 3 and time.monotonic() < deadline:
            time.sleep(0.02)
    finally:
        beat.stop()
        worker.stop()
        thread.join(10)
    assert len(runs) >= 3, "the worker ran what the embedded beat sent"
