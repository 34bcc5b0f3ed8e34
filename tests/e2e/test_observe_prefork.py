"""A prefork worker's /metrics, /livez, /readyz and ``celeriac health``, on SQLite."""

from __future__ import annotations

import subprocess
import sys
import uuid

import pytest

from .conftest import wait_for
from .observe_support import get, ledger_pids, samples, start_observed

pytestmark = pytest.mark.e2e


def health(env, port: int, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "celeriac", "health", "--port", str(port), *args],
        env=env.env,
        capture_output=True,
        text=True,
        timeout=30,
    )


def test_prefork_metrics_count_every_child_and_probes_answer(e2e):
    env, _ = e2e
    import observe_tasks  # on the path the e2e fixture set

    observe_tasks.app.conf.update(broker_url=env.url, result_backend=None)
    observe_tasks.app.close()
    queue = f"obs-{uuid.uuid4().hex[:8]}"
    try:
        # Children replaced after 3 tasks each: their counts must stay in the totals.
        args = ("-P", "prefork", "-c", "2", "--max-tasks-per-child", "3", "-Q", queue)
        proc, port = start_observed(env, *args)
        assert get(port, "/readyz") == (200, "ready\n")
        assert get(port, "/livez")[0] == 200
        assert health(env, port).returncode == 0
        assert health(env, port, "--live").returncode == 0

        oks = [observe_tasks.ok.apply_async((i,), queue=queue) for i in range(8)]
        fails = [observe_tasks.fail.apply_async((i,), queue=queue) for i in range(3)]
        assert [r.get(timeout=30) for r in oks] == list(range(8))
        for r in fails:
            with pytest.raises(ValueError):
                r.get(timeout=30)
        # The 8 ok tasks ran in at least 3 processes (3 each at most): the counts below add
        # up the files of every child, the replaced ones too.
        assert len(ledger_pids(env.ledger)) >= 3

        def counted():
            text = get(port, "/metrics")[1]
            found = samples(text)
            done = found.get('celeriac_tasks_total{state="SUCCESS",task="observe_tasks.ok"}')
            # A result is stored before its message is acknowledged (acks are coalesced): the
            # children hold the last messages a few ms after their results can be read.
            settled = found.get('celeriac_worker_tasks_active{hostname="w1@observe"}') == 0
            return found if done == 8 and settled else None

        found = wait_for(counted, 10, "the metrics to count every outcome and settle")
        assert found['celeriac_tasks_total{state="SUCCESS",task="observe_tasks.ok"}'] == 8
        assert found['celeriac_tasks_total{state="FAILURE",task="observe_tasks.fail"}'] == 3
        assert sorted(k for k in found if k.startswith("celeriac_tasks_total")) == [
            'celeriac_tasks_total{state="FAILURE",task="observe_tasks.fail"}',
            'celeriac_tasks_total{state="SUCCESS",task="observe_tasks.ok"}',
        ]  # in the order the children's files were read
        assert found['celeriac_task_runtime_seconds_count{task="observe_tasks.ok"}'] == 8
        assert found['celeriac_task_runtime_seconds_count{task="observe_tasks.fail"}'] == 3
        assert found['celeriac_worker_up{hostname="w1@observe"}'] == 1
        assert found['celeriac_worker_tasks_active{hostname="w1@observe"}'] == 0
        assert found[f'celeriac_queue_depth{{queue="{queue}"}}'] == 0
        assert found[f'celeriac_queue_oldest_age_seconds{{queue="{queue}"}}'] == 0
    finally:
        observe_tasks.app.close()
    assert env.stop_worker(proc) == 0
    assert health(env, port).returncode == 1
    assert "no answer" in health(env, port).stdout
