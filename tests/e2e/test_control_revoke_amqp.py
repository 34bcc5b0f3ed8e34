"""Revoke both ways in a mixed fleet on RabbitMQ, with no result store: Celery's client and
worker, Celeriac's client and a prefork worker, one vhost, each worker on its own queue. The
ledger (start/run/end lines written by the tasks) says what ran."""

from __future__ import annotations

import sys
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from tests import amqp_support

from .amqp_env import AmqpEnv
from .redis_env import HERE, wait_for

pytestmark = [pytest.mark.e2e, pytest.mark.amqp, pytest.mark.xdist_group("control-revoke-amqp")]


class Fleet:
    def __init__(self, env: AmqpEnv, tasks: Any, celery: Any, qk: str, qc: str) -> None:
        self.env, self.tasks, self.celery, self.qk, self.qc = env, tasks, celery, qk, qc

    def count(self, kind: str, task_id: str) -> int:
        return self.env.ledger_entries(kind)[task_id]

    def celery_log(self) -> str:
        return self.env.log(self.env.workers[1])


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    from celery import Celery

    mp = pytest.MonkeyPatch()
    with amqp_support.private_vhost() as vhost:
        env = AmqpEnv(tmp_path_factory.mktemp("revoke-amqp"), vhost)
        mp.setenv("E2E_LEDGER", str(env.ledger))
        mp.syspath_prepend(str(HERE))
        import amqp_tasks

        amqp_tasks.LEDGER = env.ledger
        amqp_tasks.app.conf.update(
            broker_url=env.url, result_backend=None, broker_transport_options={}
        )
        amqp_tasks.app.close()
        celery = Celery("revoke-client", broker=env.url, set_as_current=False)
        qk, qc = f"k-{uuid.uuid4().hex[:8]}", f"c-{uuid.uuid4().hex[:8]}"
        try:
            env.start_worker("-Q", qk, "-c", "1", "-P", "prefork", name="k1")
            argv = [sys.executable, "-m", "celery", "-A", "celery_amqp_tasks", "worker"]
            argv += ["-P", "prefork", "-c", "1", "-l", "info", "-n", "c1@e2e", "-Q", qc]
            argv += ["--without-mingle", "--without-gossip", "--without-heartbeat"]
            env._spawn("c1", argv, b" ready.")
            yield Fleet(env, amqp_tasks, celery, qk, qc)
        finally:
            celery.close()
            amqp_tasks.app.close()
            env.close()
            mp.undo()


def test_celery_revokes_on_a_celeriac_worker_pending_and_running(fleet):
    blocker = fleet.tasks.sleepy.apply_async((1.0,), queue=fleet.qk)
    wait_for(lambda: fleet.count("start", blocker.id) == 1, 15, "the blocker to start")
    pending = fleet.tasks.add.apply_async((1, 2), queue=fleet.qk)
    fleet.celery.control.revoke(pending.id)
    after = fleet.tasks.add.apply_async((3, 4), queue=fleet.qk)
    wait_for(lambda: fleet.count("run", after.id) == 1, 15, "the task after it to run")
    assert fleet.count("run", pending.id) == 0

    running = fleet.tasks.sleepy.apply_async((30,), queue=fleet.qk)
    wait_for(lambda: fleet.count("start", running.id) == 1, 15, "the long task to start")
    fleet.celery.control.revoke(running.id, terminate=True, signal="SIGKILL")
    # The child is replaced and serves the next task; the revoked one never finished or ran again.
    nxt = fleet.tasks.add.apply_async((5, 6), queue=fleet.qk)
    wait_for(lambda: fleet.count("run", nxt.id) == 1, 20, "the next task to run")
    assert (fleet.count("start", running.id), fleet.count("end", running.id)) == (1, 0)


def test_celeriac_revokes_on_a_celery_worker_pending_and_running(fleet):
    blocker = fleet.celery.send_task("interop.sleepy", (1.0,), queue=fleet.qc)
    wait_for(lambda: fleet.count("start", blocker.id) == 1, 20, "their blocker to start")
    pending = fleet.celery.send_task("interop.sleepy", (0.1,), queue=fleet.qc)
    fleet.tasks.app.control.revoke(pending.id)
    wait_for(
        lambda: f"Discarding revoked task: interop.sleepy[{pending.id}]" in fleet.celery_log(),
        15,
        "Celery to discard the revoked task",
    )
    assert fleet.count("start", pending.id) == 0

    running = fleet.celery.send_task("interop.sleepy", (30,), queue=fleet.qc)
    wait_for(lambda: fleet.count("start", running.id) == 1, 15, "their long task to start")
    replies = fleet.tasks.app.control.revoke(
        running.id, terminate=True, reply=True, timeout=2.0, destination=["c1@e2e"]
    )
    assert replies == [{"c1@e2e": {"ok": f"terminate: {running.id}"}}]
    after = fleet.celery.send_task("interop.sleepy", (0.0,), queue=fleet.qc)
    wait_for(lambda: fleet.count("end", after.id) == 1, 20, "their next task to run")
    assert (fleet.count("start", running.id), fleet.count("end", running.id)) == (1, 0)
