"""Issue #4's Redis reliability guarantees with real worker processes: a Redis restart under
load loses nothing, and delayed tasks stay in Redis, not in worker memory."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from celeriac.protocol.message import build_task_message
from celeriac.protocol.publication import Route
from celeriac.protocol.serializers import default_registry
from celeriac.transports.redis.broker import RedisBroker, encode_envelope

from .redis_env import HERE, PrivateRedis, RedisEnv, wait_for

pytestmark = [pytest.mark.e2e, pytest.mark.redis]

PRODUCER = """
import json, sys, time
import redis_tasks
from celeriac.exceptions import CeleriacError
sent, failed = [], 0
for i in range(int(sys.argv[1])):
    try:
        sent.append(redis_tasks.add.delay(i, i).id)
    except CeleriacError:
        failed += 1
    time.sleep(0.0003)
print(json.dumps({"sent": sent, "failed": failed}))
"""


@pytest.fixture
def private(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[RedisEnv, Any]]:
    server = PrivateRedis(tmp_path)
    server.start()
    env = RedisEnv(tmp_path, url=server.url)
    env.server = server  # type: ignore[attr-defined]
    monkeypatch.setenv("E2E_LEDGER", str(env.ledger))
    monkeypatch.syspath_prepend(str(HERE))
    import redis_tasks

    redis_tasks.app.conf.update(broker_url=server.url, result_backend=server.url)
    redis_tasks.app.close()
    try:
        yield env, redis_tasks
    finally:
        redis_tasks.app.close()
        env.close()
        server.stop()


def test_redis_restart_under_load_loses_no_accepted_task(private):
    env, tasks = private
    server: PrivateRedis = env.server
    env.set_vt(3)
    env.start_worker("-c", "2")
    env.start_worker("-c", "2")
    producer = subprocess.Popen(
        [sys.executable, "-c", PRODUCER, "5000"], env=env.env, stdout=subprocess.PIPE, cwd=env.tmp
    )
    wait_for(lambda: sum(env.ledger_entries("run").values()) >= 500, 20, "work under way")
    server.stop()
    time.sleep(0.5)
    server.start()
    out, _ = producer.communicate(timeout=60)
    assert producer.returncode == 0
    report = json.loads(out)
    sent = report["sent"]
    assert len(sent) + report["failed"] == 5000
    assert report["failed"] == 0  # publishes retry with backoff and ride out the restart

    backend = tasks.app.backend
    wait_for(
        lambda: (
            len(backend.get_states(sent)) == len(sent)
            and set(backend.get_states(sent).values()) == {"SUCCESS"}
        ),
        60,
        "every accepted task to succeed",
    )
    runs = env.ledger_entries("run")
    assert set(sent) <= set(runs), "an accepted task never ran"
    duplicates = {tid: n for tid, n in runs.items() if n > 1}
    assert len(duplicates) <= 16, duplicates  # at most what was in flight at the restart
    for proc in env.workers:
        assert proc.poll() is None, env.log(proc)


def test_100k_countdown_tasks_stay_in_redis_not_in_the_worker(private):
    env, tasks = private
    worker = env.start_worker("-c", "1")
    time.sleep(1.5)
    idle = _rss_mb(worker.pid)
    broker = tasks.app.broker
    assert isinstance(broker, RedisBroker)
    eta = time.time() + 3600
    msg = build_task_message(
        default_registry, task_name="interop.add", task_id="later", args=(1, 1), eta=eta
    )
    with broker.client.pipeline(transaction=False) as pipe:
        for i in range(100_000):  # the publish script itself, pipelined to save time
            envelope = encode_envelope(msg, Route("celery"), 0, f"tag-{i}")
            broker._script(args=["publish", "", "celery", 0, "3600", envelope, "0"], client=pipe)
            if i % 5000 == 4999:
                pipe.execute()
    assert broker.depth("celery") == 100_000
    time.sleep(2.5)  # several sweeps
    assert _rss_mb(worker.pid) - idle < 20
    assert broker.client.hlen("unacked") == 0  # none was handed to the worker

    assert env.stop_worker(worker) == 0
    env.start_worker("-c", "1")
    time.sleep(1)
    assert broker.depth("celery") == 100_000
    assert broker.client.zcard("celeriac.delayed.celery") == 100_000


def _rss_mb(pid: int) -> float:
    """RSS of a worker and its pool children, in MB."""
    out = subprocess.run(
        ["ps", "-o", "rss=", "--ppid", str(pid), "-p", str(pid)], capture_output=True, text=True
    ).stdout
    return sum(int(x) for x in out.split()) / 1024
