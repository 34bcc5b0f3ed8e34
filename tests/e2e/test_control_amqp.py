"""Remote control on RabbitMQ: Celery's client inspects a Celeriac worker; a revoke with no
result store (``rpc://`` workers, a client with no backend) works through the broadcast."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from tests import amqp_support

from .amqp_env import AmqpEnv
from .redis_env import HERE, wait_for

pytestmark = [pytest.mark.e2e, pytest.mark.amqp]


@pytest.fixture(scope="module")
def amqp_fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[AmqpEnv, Any, str]]:
    mp = pytest.MonkeyPatch()
    with amqp_support.private_vhost() as vhost:
        env = AmqpEnv(tmp_path_factory.mktemp("ctl-amqp"), vhost)
        mp.setenv("E2E_LEDGER", str(env.ledger))
        mp.syspath_prepend(str(HERE))
        import amqp_tasks

        amqp_tasks.LEDGER = env.ledger
        # The client keeps no results: a revoke can only travel as a broadcast.
        amqp_tasks.app.conf.update(
            broker_url=env.url, result_backend=None, broker_transport_options={}
        )
        amqp_tasks.app.close()
        queue = f"k-{uuid.uuid4().hex[:8]}"
        try:
            env.start_worker("-Q", queue, "-c", "1", name="k1")
            yield env, amqp_tasks, queue
        finally:
            amqp_tasks.app.close()
            env.close()
            mp.undo()


def _started(env: AmqpEnv, task_id: str) -> bool:
    return env.ledger_entries("start")[task_id] == 1


def test_celery_inspect_lists_a_celeriac_worker_and_its_running_task(amqp_fleet):
    from celery import Celery

    env, tasks, queue = amqp_fleet
    celery = Celery("control-client", broker=env.url, set_as_current=False)
    try:
        result = tasks.sleepy.apply_async((1.5,), queue=queue)
        wait_for(lambda: _started(env, result.id), 15, "the task to start")
        inspect = celery.control.inspect(timeout=1.0, destination=["k1@e2e"])
        assert inspect.ping() == {"k1@e2e": {"ok": "pong"}}
        [info] = inspect.active()["k1@e2e"]
        assert (info["id"], info["name"], info["args"]) == (result.id, "interop.sleepy", [1.5])
        assert celery.control.ping(destination=["k1@e2e"]) == [{"k1@e2e": {"ok": "pong"}}]
    finally:
        celery.close()
    wait_for(lambda: env.ledger_entries("end")[result.id] == 1, 15, "the task to end")


def test_revoke_with_no_result_backend_works_through_the_broadcast(amqp_fleet):
    env, tasks, queue = amqp_fleet
    blocker = tasks.sleepy.apply_async((1.0,), queue=queue)
    wait_for(lambda: _started(env, blocker.id), 15, "the blocker to start")
    pending = tasks.add.apply_async((1, 2), queue=queue)
    tasks.app.control.revoke(pending.id)
    after = tasks.add.apply_async((3, 4), queue=queue)
    wait_for(lambda: env.ledger_entries("run")[after.id] == 1, 15, "the task after it to run")
    time.sleep(0.2)
    assert env.ledger_entries("run")[pending.id] == 0
    replies = tasks.app.control.inspect(destination=["k1@e2e"], timeout=2.0).revoked()
    assert replies == {"k1@e2e": [pending.id]}
