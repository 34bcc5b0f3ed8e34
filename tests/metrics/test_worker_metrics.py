"""/metrics of a worker in one process (threads pool: no multiprocess files), and what the
collector reads from the broker at scrape time."""

from __future__ import annotations

import threading
import time
import uuid

import pytest

from celeriac import Celeriac
from celeriac.metrics.worker import WorkerCollector, WorkerView
from celeriac.worker import Worker
from tests.e2e.conftest import wait_for
from tests.e2e.observe_support import get, samples


def test_threads_worker_counts_its_outcomes_by_name_and_state():
    app = Celeriac("m", broker_url="memory://", worker_metrics_port=0, worker_http_host="127.0.0.1")

    @app.task(name="m.ok")
    def ok(x: int) -> int:
        return x

    @app.task(name="m.fail")
    def fail() -> None:
        raise KeyError("k")

    worker = Worker(app, pool="threads", concurrency=2, install_signal_handlers=False)
    thread = threading.Thread(target=worker.start, daemon=True)
    thread.start()
    assert worker.ready.wait(10)
    try:
        assert [ok.delay(i).get(timeout=10) for i in range(5)] == list(range(5))
        for _ in range(2):
            with pytest.raises(KeyError):
                fail.delay().get(timeout=10)
        assert worker._monitor is not None
        port = worker._monitor.servers[0].port
        found = wait_for(
            lambda: (
                (s := samples(get(port, "/metrics")[1])).get(
                    'celeriac_tasks_total{state="FAILURE",task="m.fail"}'
                )
                == 2
                and s
            ),
            5,
            "both failures counted",
        )
        assert found['celeriac_tasks_total{state="SUCCESS",task="m.ok"}'] == 5
        assert found['celeriac_task_runtime_seconds_count{task="m.ok"}'] == 5
        assert found[f'celeriac_worker_up{{hostname="{worker.hostname}"}}'] == 1
        assert found['celeriac_queue_depth{queue="celery"}'] == 0
        # memory:// cannot tell how old its oldest message is: no sample rather than a guess
        assert not any(k.startswith("celeriac_queue_oldest_age_seconds") for k in found)
    finally:
        worker.stop()
        thread.join(10)


def test_collector_reads_depth_and_oldest_age_on_sqlite(tmp_path):
    app = Celeriac("q", broker_url=f"sqlite:///{tmp_path / 'b.db'}")
    queue = f"q-{uuid.uuid4().hex[:6]}"
    try:
        before = time.time()
        for i in range(3):
            app.send_task("q.any", (i,), queue=queue)
        time.sleep(0.2)  # the age to measure, not a synchronisation
        view = WorkerView("w@h", (queue,), lambda: False, lambda: 0, lambda: app.broker)
        families = {f.name: f for f in WorkerCollector(view).collect()}
        [depth] = families["celeriac_queue_depth"].samples
        assert (depth.labels, depth.value) == ({"queue": queue}, 3.0)
        [age] = families["celeriac_queue_oldest_age_seconds"].samples
        assert 0.2 <= age.value <= time.time() - before
        [up] = families["celeriac_worker_up"].samples
        assert (up.labels, up.value) == ({"hostname": "w@h"}, 0.0)
        assert app.broker.oldest_age(f"{queue}-empty") == 0.0
    finally:
        app.close()
