"""Issue #4 end to end: real `celeriac worker` and `celery worker` processes on a real Redis."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from celeriac import chord, states
from celeriac.exceptions import TaskRevokedError
from celeriac.protocol.message import Message, build_task_message
from celeriac.protocol.publication import Route
from celeriac.protocol.serializers import default_registry
from celeriac.transports.redis.broker import encode_envelope
from tests import redis_support

from .redis_env import HERE, RedisEnv, wait_for

pytestmark = [pytest.mark.e2e, pytest.mark.redis]


@pytest.fixture
def redis_e2e(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[RedisEnv, Any]]:
    env = RedisEnv(tmp_path)
    monkeypatch.setenv("E2E_LEDGER", str(env.ledger))
    monkeypatch.syspath_prepend(str(HERE))
    import redis_tasks

    redis_tasks.app.conf.update(broker_url=env.url, result_backend=env.url)
    redis_tasks.app.close()
    try:
        yield env, redis_tasks
    finally:
        redis_tasks.app.close()
        env.close()


@pytest.fixture
def celery_client(redis_e2e: tuple[RedisEnv, Any]) -> Iterator[Any]:
    """A stock Celery app on the same Redis and key prefix (it only sends and reads results)."""
    from celery import Celery

    env, _ = redis_e2e
    url = redis_support.base_url()
    app = Celery("interop-client", broker=url, backend=url, set_as_current=False)
    app.conf.update(
        broker_transport_options={"global_keyprefix": env.prefix},
        result_backend_transport_options={"global_keyprefix": env.prefix},
    )
    try:
        yield app
    finally:
        app.close()


def test_a_task_three_times_longer_than_the_lease_runs_once(redis_e2e):
    env, tasks = redis_e2e
    env.set_vt(1)
    env.start_worker("-c", "1")
    env.start_worker("-c", "1")  # would take the message if the lease lapsed
    result = tasks.sleepy.delay(3)
    assert result.get(timeout=20) == 3
    assert env.ledger_entries("start")[result.id] == 1
    assert env.ledger_entries("end")[result.id] == 1


def test_sigkill_mid_task_runs_again_after_the_lease(redis_e2e):
    env, tasks = redis_e2e
    env.set_vt(2)
    first = env.start_worker("-c", "1")
    result = tasks.sleepy.delay(2)
    wait_for(lambda: env.ledger_entries("start")[result.id] == 1, 10, "the task to start")
    os.kill(first.pid, signal.SIGKILL)
    first.wait(5)
    killed_at = time.time()
    env.start_worker("-c", "1")
    assert result.get(timeout=30) == 2
    assert env.ledger_entries("start")[result.id] == 2
    assert env.ledger_entries("end")[result.id] == 1
    # Not before the dead worker's lease ran out; soon after it (sweeps run every 0.25 s).
    assert 2 <= time.time() - killed_at <= 2 + 2 + 3


def test_bad_input_on_the_wire_is_dead_lettered_and_the_worker_keeps_going(redis_e2e):
    env, tasks = redis_e2e
    app = tasks.app
    client = app.broker.client
    client.lpush(f"{env.prefix}celery", b"\x00 this is not JSON")
    good = build_task_message(default_registry, task_name="interop.add", task_id="broken-body")
    broken = Message(good.headers, good.properties, b"[[1, 2], {not json", "application/json")
    client.lpush(f"{env.prefix}celery", encode_envelope(broken, Route("celery"), 0, "broken-tag"))
    unknown = app.send_task("interop.nope", (1, 2))

    worker = env.start_worker("-c", "2")
    assert tasks.add.delay(20, 22).get(timeout=10) == 42
    wait_for(lambda: len(app.broker.dead_letters()) == 3, 10, "three dead letters")
    reasons = {d.message.task_id: d.reason for d in app.broker.dead_letters()}
    assert reasons.keys() == {unknown.id, "broken-body", None}
    assert "NotRegistered" in reasons[unknown.id]
    assert "DecodeError" in reasons["broken-body"]
    assert reasons[None].startswith("not a JSON envelope")
    assert unknown.state == states.FAILURE
    assert worker.poll() is None
    assert tasks.add.delay(1, 1).get(timeout=10) == 2  # still serving


def test_celery_client_to_celeriac_worker(redis_e2e, celery_client):
    from celery import chord as celery_chord
    from celery.exceptions import TaskRevokedError as CeleryRevoked

    env, _ = redis_e2e
    expired = celery_client.send_task("interop.add", (1, 1), expires=0.05)
    time.sleep(0.1)
    env.start_worker("-c", "2")

    assert celery_client.send_task("interop.add", (2,), {"y": 3}).get(timeout=10) == 5
    sent = time.time()
    ran_at = celery_client.send_task("interop.stamp", countdown=1).get(timeout=10)
    assert 1.0 <= ran_at - sent <= 2.5
    with pytest.raises(CeleryRevoked):
        expired.get(timeout=10)
    with pytest.raises(ValueError) as info:
        celery_client.send_task("interop.boom", ("bad input", 42)).get(timeout=10)
    assert info.value.args == ("bad input", 42)
    flaky = celery_client.send_task("interop.flaky", (2,))
    assert flaky.get(timeout=10) == 2
    assert env.ledger_entries("run")[flaky.id] == 3
    # A chord Celery started (it made the .s counter) is finished by Celeriac's worker.
    add = celery_client.signature("interop.add")
    header = [add.clone((i, i)) for i in range(10)]
    body = celery_client.signature("interop.tsum")
    assert celery_chord(header, body).apply_async().get(timeout=10) == 90


def test_celeriac_client_to_celery_worker(redis_e2e):
    env, tasks = redis_e2e
    # With default options: countdowns go out with the eta header a Celery worker holds.
    expired = tasks.add.apply_async((1, 1), expires=0.05)
    time.sleep(0.1)
    env.start_celery_worker()

    assert tasks.add.delay(2, y=3).get(timeout=10) == 5
    sent = time.time()
    ran_at = tasks.stamp.apply_async(countdown=1).get(timeout=10)
    assert 1.0 <= ran_at - sent <= 2.5
    with pytest.raises(TaskRevokedError):
        expired.get(timeout=10)
    with pytest.raises(ValueError) as info:
        tasks.boom.delay("bad input", 42).get(timeout=10)
    assert info.value.args == ("bad input", 42)
    assert tasks.flaky.delay(2).get(timeout=10) == 2
    # A chord Celeriac started is counted and finished by Celery's worker.
    result = chord(tasks.add.s(i, i) for i in range(10))(tasks.tsum.s())
    assert result.get(timeout=10) == 90


def test_a_celery_worker_recovers_the_task_of_a_dead_celeriac_worker(redis_e2e):
    # Mixed fleet: our in-flight record is kombu's, so a stock Celery worker restores it.
    env, tasks = redis_e2e
    ours = env.start_worker("-c", "1")
    result = tasks.sleepy.delay(1)
    wait_for(lambda: env.ledger_entries("start")[result.id] == 1, 10, "the task to start")
    os.kill(ours.pid, signal.SIGKILL)
    ours.wait(5)
    env.env["INTEROP_VT"] = "2"
    env.start_celery_worker()
    assert result.get(timeout=20) == 1
    assert env.ledger_entries("end")[result.id] == 0  # it was the Celery worker that ran it
