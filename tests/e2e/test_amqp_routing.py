"""Routing end to end on RabbitMQ: Celery and Celeriac peers with the same ``task_queues`` reach
each other through a topic exchange, and a Broadcast task runs once on each of two workers."""

from __future__ import annotations

import json
import subprocess
import time
import uuid
from pathlib import Path
from typing import Any

import pytest

from tests import amqp_support

from .amqp_env import AmqpEnv
from .conftest import ledger_records
from .redis_env import wait_for
from .test_amqp import amqp_e2e  # noqa: F401 - a fixture

pytestmark = [pytest.mark.e2e, pytest.mark.amqp]


def topic_spec(tag: str) -> tuple[str, str, list[list[str]]]:
    images, media = f"images-{tag}", f"media-{tag}"
    return images, media, [[images, media, "topic", "media.image.*"]]


def runs(env: AmqpEnv) -> list[tuple[str, str]]:
    """(ledger file, task id) per run: a ledger file per worker process."""
    out = []
    for path, parts in ledger_records(env.ledger):
        if parts[0] == "run":
            out.append((path.name, parts[1]))
    return out


def test_celery_client_to_celeriac_worker_through_a_topic_exchange(amqp_e2e: Any) -> None:  # noqa: F811
    from celery import Celery
    from kombu import Exchange, Queue

    env, _ = amqp_e2e
    images, media, spec = topic_spec(uuid.uuid4().hex[:8])
    env.env["E2E_TASK_QUEUES"] = json.dumps(spec)
    env.start_worker("-P", "threads", "-c", "2")  # no -Q: every queue of task_queues
    client = Celery("interop-client", broker=env.url, backend="rpc://", set_as_current=False)
    client.conf.task_queues = [Queue(images, Exchange(media, type="topic"), "media.image.*")]
    try:
        # Through the queue's route first: Celery declares the queue and its exchange then
        # (an exchange-only route declares nothing, and the worker may not have declared yet).
        by_queue = client.send_task("interop.add", (10,), {"y": 1}, queue=images)
        by_key = client.send_task(
            "interop.add", (2, 3), exchange=media, routing_key="media.image.png"
        )
        assert by_queue.get(timeout=20) == 11
        assert by_key.get(timeout=20) == 5
    finally:
        client.close()
        amqp_support.delete_queues(env.url, [images])
        amqp_support.delete_exchanges(env.url, [media])


def test_celeriac_client_to_celery_worker_through_a_topic_exchange(amqp_e2e: Any) -> None:  # noqa: F811
    from celeriac import Exchange, Queue

    env, tasks = amqp_e2e
    images, media, spec = topic_spec(uuid.uuid4().hex[:8])
    env.env["E2E_TASK_QUEUES"] = json.dumps(spec)
    env.start_celery_worker()  # consumes its task_queues: the images queue only
    tasks.app.conf.update(
        broker_url=env.url,
        result_backend="rpc://",
        task_queues=[Queue(images, Exchange(media, type="topic"), "media.image.*")],
        task_routes={"interop.add": {"exchange": media, "routing_key": "media.image.jpg"}},
    )
    tasks.app.close()
    try:
        tasks.app.backend  # noqa: B018 - opened first: its reply queue goes on what we send
        assert tasks.add.delay(4, 5).get(timeout=20) == 9
    finally:
        tasks.app.conf.update(task_queues=None, task_routes=None)  # the module outlives the test
        tasks.app.close()
        amqp_support.delete_queues(env.url, [images])
        amqp_support.delete_exchanges(env.url, [media])


def _bindings_of(vhost: str, exchange: str) -> int:
    out = subprocess.run(
        ["rabbitmqctl", "list_bindings", "-p", vhost, "-q", "source_name"],
        capture_output=True,
        text=True,
        timeout=60,
    ).stdout
    return sum(1 for line in out.splitlines() if line.strip() == exchange)


@pytest.mark.parametrize("pool", ["threads", "prefork"])
def test_broadcast_runs_once_on_each_of_two_workers(amqp_e2e: Any, pool: str) -> None:  # noqa: F811
    env, tasks = amqp_e2e
    reload = f"reload-{uuid.uuid4().hex[:8]}"
    env.env["E2E_TASK_QUEUES"] = json.dumps([[reload, reload, "fanout", ""]])
    for name in ("b1", "b2"):  # prefork: two children per worker, each consuming on its own
        env.start_worker("-P", pool, "-c", "2", "-Q", reload, name=name)
    # one queue per worker node, whatever its number of processes
    wait_for(lambda: _bindings_of(env.vhost, reload) >= 2, 30, "both workers to bind")
    from celeriac import Broadcast

    tasks.app.conf.update(task_queues=[Broadcast(reload)])
    tasks.app.close()
    try:
        sent = [tasks.add.apply_async((i,), queue=reload, ignore_result=True).id for i in (1, 2)]
        wait_for(lambda: len(runs(env)) >= 4, 20, "four runs")
        time.sleep(0.5)  # a fifth run (a second copy in one worker) would show up by now
        got = runs(env)
        assert sorted(t for _, t in got) == sorted(sent * 2)
        assert _bindings_of(env.vhost, reload) == 2
    finally:
        tasks.app.conf.update(task_queues=None, task_routes=None)  # the module outlives the test
        tasks.app.close()
        amqp_support.delete_exchanges(env.url, [reload])


def test_broadcast_on_redis_runs_once_on_each_of_two_prefork_workers(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from .redis_env import HERE, RedisEnv

    env = RedisEnv(tmp_path)
    reload = f"reload-{uuid.uuid4().hex[:8]}"
    env.env.update(E2E_BROADCAST=reload, E2E_LEDGER=str(env.ledger))
    monkeypatch.syspath_prepend(str(HERE))
    from celeriac import Broadcast, Celeriac

    client = Celeriac("client", broker_url=env.url, task_queues=[Broadcast(reload)])
    try:
        for name in ("r1", "r2"):
            env.start_worker("-P", "prefork", "-c", "2", "-Q", reload, name=name)
        # PUB/SUB: each of the four children must have subscribed first
        wait_for(lambda: _listeners(client, env.prefix, reload) == 4, 30, "four children")
        sent = [client.send_task("interop.add", (i,), queue=reload).id for i in (1, 2)]
        wait_for(lambda: len(runs(env)) >= 4, 20, "four runs")  # type: ignore[arg-type]
        time.sleep(0.5)
        assert sorted(t for _, t in runs(env)) == sorted(sent * 2)  # type: ignore[arg-type]
    finally:
        client.close()
        env.close()


def _listeners(app: Any, prefix: str, exchange: str) -> int:
    """How many processes listen to broadcasts on ``exchange``: PUBLISH answers how many
    subscriptions matched, counting only this test's channel (other tests may be subscribed
    to theirs meanwhile). The probe is not an envelope: workers log and drop it."""
    from celeriac.transports.redis.fanout import fanout_channel
    from tests import redis_support

    channel = fanout_channel(prefix, redis_support.DB, exchange)
    return int(app.broker.client.publish(channel, b"readiness probe"))
