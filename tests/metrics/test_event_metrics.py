"""The task metrics computed from events (what the dashboard's /metrics serves)."""

from __future__ import annotations

import time

from celeriac.metrics.events import EventMetrics
from tests.e2e.observe_support import samples


def test_counts_finished_tasks_by_name_state_and_worker_from_events():
    metrics = EventMetrics()
    now = time.time()
    feed = [
        {"type": "worker-online", "hostname": "w1", "freq": 2.0, "timestamp": now},
        {"type": "worker-heartbeat", "hostname": "w1", "freq": 2.0, "active": 1, "timestamp": now},
        {"type": "task-received", "uuid": "a", "name": "p.add", "hostname": "w1"},
        {"type": "task-started", "uuid": "a", "hostname": "w1"},
        {"type": "task-succeeded", "uuid": "a", "hostname": "w1", "runtime": 0.02},
        {"type": "task-received", "uuid": "b", "name": "p.add", "hostname": "w1"},
        {"type": "task-failed", "uuid": "b", "hostname": "w1", "runtime": 0.5},
        {"type": "task-received", "uuid": "c", "name": "p.mul", "hostname": "w1"},
        {"type": "task-retried", "uuid": "c", "hostname": "w1"},
        {"type": "task-succeeded", "uuid": "c", "hostname": "w1", "runtime": 3.0},
        {"type": "worker-offline", "hostname": "w2", "timestamp": now},
    ]
    for event in feed:
        metrics.event(event)
    body, ctype = metrics.render()
    assert ctype.startswith("text/plain")
    found = samples(body.decode())
    tasks = {k: v for k, v in found.items() if k.startswith("celeriac_tasks_total")}
    assert tasks == {
        'celeriac_tasks_total{hostname="w1",state="SUCCESS",task="p.add"}': 1,
        'celeriac_tasks_total{hostname="w1",state="FAILURE",task="p.add"}': 1,
        'celeriac_tasks_total{hostname="w1",state="RETRY",task="p.mul"}': 1,
        'celeriac_tasks_total{hostname="w1",state="SUCCESS",task="p.mul"}': 1,
    }
    assert found['celeriac_task_runtime_seconds_count{hostname="w1",task="p.add"}'] == 2
    assert found['celeriac_task_runtime_seconds_sum{hostname="w1",task="p.add"}'] == 0.52
    assert found['celeriac_task_runtime_seconds_bucket{hostname="w1",le="0.025",task="p.add"}'] == 1
    assert found['celeriac_worker_up{hostname="w1"}'] == 1
    assert found['celeriac_worker_tasks_active{hostname="w1"}'] == 1
    assert found['celeriac_worker_up{hostname="w2"}'] == 0
    assert metrics.state.tasks["c"].state == "SUCCESS"  # the State it fed
