"""Issue #4's Redis reliability guarantees with real worker processes: a Redis restart under
load loses nothing, delayed tasks stay in Redis, not in worker memory, and a delivery a killed
Celery worker abandoned comes back where kombu would put it."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from celeriac import Exchange, Queue
from celeriac.brokers import create_broker
from celeriac.protocol.message import build_task_message
from celeriac.protocol.publication import Route
from celeriac.protocol.serializers import default_registry
from celeriac.transports.redis.broker import RedisBroker, encode_envelope

from .redis_env import HERE, PrivateRedis, RedisEnv, wait_for
from .test_redis import redis_e2e  # noqa: F401 - fixture

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
    for first in range(0, 100_000, 1000):  # the publish script itself, 1,000 a call
        envelopes = [
            encode_envelope(msg, Route("celery"), 0, f"tag-{i}") for i in range(first, first + 1000)
        ]
        broker._script(args=["publish", "", "celery", 0, "3600", "0", 1000, *envelopes])
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


# A stock Celery worker consuming a queue bound to a topic exchange (kombu writes the binding).
CELERY_TOPIC_APP = """
from kombu import Exchange, Queue
from celery_tasks import app
app.conf.update(
    task_queues=[Queue("images", Exchange("media", type="topic"), routing_key="media.image.*")],
    task_track_started=True,
)
"""


def test_a_topic_delivery_a_killed_celery_worker_held_comes_back_to_its_queue(
    redis_e2e,  # noqa: F811
):
    env, tasks = redis_e2e
    media = Exchange("media", type="topic")
    tasks.app.conf.update(task_queues=[Queue("images", media, routing_key="media.image.*")])
    tasks.app.close()
    try:
        _kill_a_celery_worker_mid_task_and_restore(env, tasks)
    finally:
        tasks.app.conf.update(task_queues=None)
        tasks.app.close()


def _kill_a_celery_worker_mid_task_and_restore(env: RedisEnv, tasks: Any) -> None:
    (env.tmp / "celery_topic.py").write_text(CELERY_TOPIC_APP)
    argv = [sys.executable, "-m", "celery", "-A", "celery_topic", "worker", "-P", "solo"]
    argv += ["-Q", "images", "-l", "info", "-n", "celery@e2e", "--without-mingle"]
    celery = env._spawn("celery", [*argv, "--without-gossip", "--without-heartbeat"], b" ready.")

    result = tasks.sleepy.apply_async((1,), exchange="media", routing_key="media.image.png")
    wait_for(lambda: result.state == "STARTED", 20, "the Celery worker to start the task")
    os.kill(celery.pid, signal.SIGKILL)
    celery.wait(5)
    client = tasks.app.broker.client
    [entry] = client.hvals(f"{env.prefix}unacked")
    assert json.loads(entry)[1:] == ["media", "media.image.png"]  # what kombu recorded

    # Any Celeriac consumer sweeps; this one restores after 1 s instead of kombu's hour.
    sweeper = create_broker(env.url, {"celery_visibility_timeout": 1})
    try:
        wait_for(
            lambda: (
                sweeper.fetch(["elsewhere"], 1, timeout=0.1) == []
                and not client.hlen(f"{env.prefix}unacked")
            ),
            10,
            "the restore",
        )
    finally:
        sweeper.close()
    assert not client.exists(f"{env.prefix}media.image.png")  # no list named after the key
    assert tasks.app.broker.depth("images") == 1
    env.start_worker("-Q", "images", "-c", "1")
    assert result.get(timeout=20) == 1
    assert env.ledger_entries("end")[result.id] == 1  # run to the end once, by Celeriac


@pytest.fixture
def results_elsewhere(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[tuple[RedisEnv, Any, PrivateRedis]]:
    """The broker on the shared Redis, results on a private server a test may stop."""
    server = PrivateRedis(tmp_path)
    server.start()
    env = RedisEnv(tmp_path)
    env.env["CELERIAC_RESULT_BACKEND"] = server.url
    monkeypatch.setenv("E2E_LEDGER", str(env.ledger))
    monkeypatch.syspath_prepend(str(HERE))
    import redis_tasks

    redis_tasks.app.conf.update(broker_url=env.url, result_backend=server.url)
    redis_tasks.app.close()
    try:
        yield env, redis_tasks, server
    finally:
        redis_tasks.app.close()
        env.close()
        server.stop()


def test_a_redelivered_success_is_not_run_while_its_state_cannot_be_read(results_elsewhere):
    env, tasks, results = results_elsewhere
    app = tasks.app
    app.backend.store_result("done-once", 2, "SUCCESS")
    tasks.add.apply_async((1, 1), task_id="done-once")
    # Its first delivery ended without an ack (as when a worker dies after storing the result).
    other = create_broker(env.url)
    try:
        [first] = other.fetch(["celery"], 1, timeout=1)
        other.requeue(first)
    finally:
        other.close()
    results.stop()

    worker = env.start_worker("-c", "1")
    wait_for(lambda: "could not read result states" in env.log(worker), 30, "a failed lookup")
    time.sleep(1.5)  # it used to run as soon as the lookup failed
    assert env.ledger_entries("run")["done-once"] == 0
    results.start()
    wait_for(lambda: "already succeeded" in env.log(worker), 30, "the state to be read")
    assert env.ledger_entries("run")["done-once"] == 0
    assert app.broker.depth("celery") == 0
    assert app.broker.client.hlen(f"{env.prefix}unacked") == 0
