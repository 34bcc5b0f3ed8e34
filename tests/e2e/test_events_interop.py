"""Events across Celery and Celeriac: each side's receiver reads the other side's workers.

Celery's own ``EventReceiver`` (on ``Celery(broker=...).connection()``) watches a Celeriac worker
started with ``-E`` on Redis and on RabbitMQ; Celeriac's receiver watches a Celery worker on Redis.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from celery import Celery

from celeriac.events import EventReceiver, State
from tests import amqp_support, redis_support

from .amqp_env import AmqpEnv
from .conftest import HERE, wait_for
from .events_support import CeleryListener, of, task_events
from .redis_env import RedisEnv


def _celery_redis(env: RedisEnv) -> Celery:
    app = Celery("listener", broker=redis_support.base_url(), set_as_current=False)
    app.conf.broker_transport_options = {"global_keyprefix": env.prefix}
    return app


@pytest.fixture(scope="module")
def redis_worker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisEnv]:
    """A Celeriac prefork worker (children consume) with task events, on a private prefix."""
    env = RedisEnv(tmp_path_factory.mktemp("events-redis"))
    (env.ledger).mkdir(exist_ok=True)
    try:
        env.start_worker("-E", "-c", "2", name="ev1")
        yield env
    finally:
        env.close()


@pytest.fixture
def celeriac_client(redis_worker: RedisEnv, monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    monkeypatch.syspath_prepend(str(HERE))
    import redis_tasks

    redis_tasks.app.conf.update(broker_url=redis_worker.url, result_backend=redis_worker.url)
    redis_tasks.app.close()
    yield redis_tasks
    redis_tasks.app.close()


def _check_common(event: dict[str, Any], hostname: str) -> None:
    assert event["hostname"] == hostname
    assert isinstance(event["pid"], int) and isinstance(event["clock"], int)
    assert isinstance(event["timestamp"], float) and isinstance(event["utcoffset"], int | float)


def _check_task_lifecycle(got: dict[str, dict[str, Any]], task_id: str, hostname: str) -> None:
    received, started, succeeded = (
        got["task-received"],
        got["task-started"],
        got["task-succeeded"],
    )
    for event in (received, started, succeeded):
        _check_common(event, hostname)
        assert event["uuid"] == task_id
    assert received["name"] == "interop.add"
    assert (received["args"], received["kwargs"], received["retries"]) == ("(2, 3)", "{}", 0)
    assert received["root_id"] == task_id and received["parent_id"] is None
    assert succeeded["result"] == "5"
    assert 0 < succeeded["runtime"] < 5
    assert received["clock"] < started["clock"] < succeeded["clock"]


@pytest.mark.redis
def test_celery_receiver_sees_a_celeriac_worker_on_redis(
    redis_worker: RedisEnv, celeriac_client: Any
) -> None:
    listener = CeleryListener(_celery_redis(redis_worker))
    try:
        beat = listener.wait(
            lambda evs: of(evs, "worker-heartbeat", hostname="ev1@e2e"), 10, "a heartbeat"
        )[0]
        _check_common(beat, "ev1@e2e")
        assert (beat["freq"], beat["sw_ident"], beat["sw_sys"]) == (2.0, "py-celeriac", "Linux")
        assert len(beat["loadavg"]) == 3
        processed_before = beat["processed"]

        ok = celeriac_client.add.delay(2, 3)
        bad = celeriac_client.boom.delay("bad input", 42)
        listener.wait(
            lambda evs: (
                task_events(evs, ok.id).get("task-succeeded")
                and task_events(evs, bad.id).get("task-failed")
            ),
            20,
            "the tasks' events",
        )
        _check_task_lifecycle(task_events(listener.events, ok.id), ok.id, "ev1@e2e")
        failed = task_events(listener.events, bad.id)["task-failed"]
        assert failed["exception"] == "ValueError('bad input', 42)"
        assert "raise ValueError(message, code)" in failed["traceback"]
        # The supervisor counts what its children finished, in its next heartbeats.
        listener.wait(
            lambda evs: of(
                evs, "worker-heartbeat", hostname="ev1@e2e", processed=processed_before + 2
            ),
            10,
            "a heartbeat counting both tasks",
        )
        # Celery's own cluster state reads ours: the worker alive, the task a success.
        state = listener.app.events.State()
        for event in list(listener.events):
            state.event(dict(event))
        assert state.workers["ev1@e2e"].alive
        task = state.tasks[ok.id]
        assert (task.state, task.name, task.result) == ("SUCCESS", "interop.add", "5")
    finally:
        listener.stop()


@pytest.mark.amqp
def test_celery_receiver_sees_a_celeriac_worker_on_rabbitmq(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with amqp_support.private_vhost() as vhost:
        env = AmqpEnv(tmp_path, vhost)
        monkeypatch.syspath_prepend(str(HERE))
        import amqp_tasks

        amqp_tasks.app.conf.update(broker_url=env.url, result_backend="rpc://")
        amqp_tasks.app.close()
        listener = CeleryListener(Celery("listener", broker=env.url, set_as_current=False))
        try:
            env.start_worker("-E", "-P", "threads", "-c", "2", name="ev2")
            listener.wait(
                lambda evs: of(evs, "worker-online", hostname="ev2@e2e"), 15, "worker-online"
            )
            beat = listener.wait(
                lambda evs: of(evs, "worker-heartbeat", hostname="ev2@e2e"), 10, "a heartbeat"
            )[0]
            _check_common(beat, "ev2@e2e")
            assert (beat["freq"], beat["sw_ident"]) == (2.0, "py-celeriac")
            ok = amqp_tasks.add.delay(2, 3)
            listener.wait(
                lambda evs: task_events(evs, ok.id).get("task-succeeded"), 20, "task-succeeded"
            )
            _check_task_lifecycle(task_events(listener.events, ok.id), ok.id, "ev2@e2e")
            # The layout Celery's tools declare: a durable topic exchange that stays (RabbitMQ
            # refuses a declaration that differs from the existing exchange).
            amqp_support.raw(
                env.url,
                lambda ch: ch.exchange_declare(
                    "celeryev", "topic", durable=True, auto_delete=False
                ),
            )
            env.stop_worker(env.workers[0])
            listener.wait(
                lambda evs: of(evs, "worker-offline", hostname="ev2@e2e"), 10, "worker-offline"
            )
        finally:
            listener.stop()
            env.close()
            amqp_tasks.app.close()


@pytest.mark.redis
def test_celeriac_receiver_sees_a_celery_worker_on_redis(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    env = RedisEnv(tmp_path)
    monkeypatch.syspath_prepend(str(HERE))
    import redis_tasks

    redis_tasks.app.conf.update(broker_url=env.url, result_backend=env.url)
    redis_tasks.app.close()
    cluster = State()
    seen: list[dict[str, Any]] = []
    receiver = EventReceiver(redis_tasks.app, {"*": lambda e: (seen.append(e), cluster.event(e))})
    try:
        argv = [sys.executable, "-m", "celery", "-A", "celery_tasks", "worker", "-P", "solo"]
        argv += ["-l", "info", "-n", "cel@e2e", "-E", "--without-mingle", "--without-gossip"]
        env._spawn("celery", argv, b" ready.")

        def until(check: Any, what: str, timeout: float = 20) -> None:
            wait_for(lambda: receiver.capture(timeout=0.2) >= 0 and check(), timeout, what)

        until(lambda: of(seen, "worker-heartbeat", hostname="cel@e2e"), "a Celery heartbeat")
        beat = of(seen, "worker-heartbeat", hostname="cel@e2e")[0]
        assert (beat["sw_ident"], beat["freq"]) == ("py-celery", 2.0)
        ok = redis_tasks.add.delay(2, 3)
        until(lambda: task_events(seen, ok.id).get("task-succeeded"), "Celery's task events")
        got = task_events(seen, ok.id)
        assert set(got) >= {"task-received", "task-started", "task-succeeded"}
        _check_task_lifecycle(got, ok.id, "cel@e2e")
        assert cluster.workers["cel@e2e"].alive()
        task = cluster.tasks[ok.id]
        assert (task.state, task.name, task.result, task.worker) == (
            "SUCCESS",
            "interop.add",
            "5",
            "cel@e2e",
        )
    finally:
        receiver.close()
        env.close()
        redis_tasks.app.close()
