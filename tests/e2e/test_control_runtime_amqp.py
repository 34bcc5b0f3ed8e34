"""add_consumer/cancel_consumer on RabbitMQ, where a worker subscribes to its queues: a prefork
worker's children subscribe to the added queue, and cancel their subscription (giving back what
it had received) when it is cancelled, so its messages stay ready for other workers."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from tests import amqp_support

from .amqp_env import AmqpEnv
from .redis_env import HERE, wait_for

pytestmark = [pytest.mark.e2e, pytest.mark.amqp]


@pytest.fixture(scope="module")
def amqp_worker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[AmqpEnv, Any, str]]:
    mp = pytest.MonkeyPatch()
    with amqp_support.private_vhost() as vhost:
        env = AmqpEnv(tmp_path_factory.mktemp("ctl-rt-amqp"), vhost)
        mp.setenv("E2E_LEDGER", str(env.ledger))
        mp.syspath_prepend(str(HERE))
        import amqp_tasks

        amqp_tasks.LEDGER = env.ledger
        amqp_tasks.app.conf.update(
            broker_url=env.url, result_backend=None, broker_transport_options={}
        )
        amqp_tasks.app.close()
        queue = f"rt-{uuid.uuid4().hex[:8]}"
        try:
            env.start_worker("-Q", queue, "-c", "2", "-P", "prefork", name="p1")
            yield env, amqp_tasks, queue
        finally:
            amqp_tasks.app.close()
            env.close()
            mp.undo()


def test_add_consumer_then_cancel_consumer_on_rabbitmq(amqp_worker):
    env, tasks, queue = amqp_worker
    control = tasks.app.control
    extra = f"rt-extra-{uuid.uuid4().hex[:8]}"

    def ask(command: str, **arguments: Any) -> Any:
        replies = control.broadcast(
            command, arguments, destination=["p1@e2e"], reply=True, timeout=5.0
        )
        return replies[0]["p1@e2e"]

    def runs(ids: list[str]) -> list[int]:
        counts = env.ledger_entries("run")
        return [counts[i] for i in ids]

    waiting = [tasks.add.apply_async((i, 1), queue=extra).id for i in range(3)]
    assert ask("add_consumer", queue=extra) == {"ok": f"add consumer {extra}"}
    wait_for(lambda: runs(waiting) == [1, 1, 1], 15, "the added queue's tasks to run")

    assert ask("cancel_consumer", queue=extra) == {"ok": f"no longer consuming from {extra}"}
    left = [tasks.add.apply_async((i, 10), queue=extra).id for i in range(2)]
    after = [tasks.add.apply_async((i, 0), queue=queue).id for i in range(4)]
    wait_for(lambda: runs(after) == [1, 1, 1, 1], 15, "the worker's own queue to be served")
    # Ready in the queue, not held by a forgotten subscription.
    wait_for(lambda: tasks.app.broker.depth(extra) == 2, 5, "both messages ready")
    assert runs(left) == [0, 0]
