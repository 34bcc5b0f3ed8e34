"""Remote control across a mixed fleet on Redis: Celery's client and workers, Celeriac's client
and workers, one key prefix, each worker on its own queue."""

from __future__ import annotations

import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from celeriac import states
from tests import redis_support

from .redis_env import HERE, RedisEnv, wait_for

pytestmark = [pytest.mark.e2e, pytest.mark.redis]


class Fleet:
    def __init__(self, env: RedisEnv, tasks: Any, celery: Any, qk: str, qc: str) -> None:
        self.env, self.tasks, self.celery, self.qk, self.qc = env, tasks, celery, qk, qc

    def cli(self, *args: str) -> subprocess.CompletedProcess[str]:
        argv = [sys.executable, "-m", "celeriac", "-A", "redis_tasks:app", *args]
        return subprocess.run(
            argv, env=self.env.env, cwd=self.env.tmp, capture_output=True, text=True, timeout=30
        )


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    from celery import Celery

    mp = pytest.MonkeyPatch()
    env = RedisEnv(tmp_path_factory.mktemp("control"))
    mp.setenv("E2E_LEDGER", str(env.ledger))
    mp.syspath_prepend(str(HERE))
    import redis_tasks

    redis_tasks.app.conf.update(broker_url=env.url, result_backend=env.url)
    redis_tasks.app.close()
    url = redis_support.base_url()
    celery = Celery("control-client", broker=url, backend=url, set_as_current=False)
    celery.conf.update(
        broker_transport_options={"global_keyprefix": env.prefix},
        result_backend_transport_options={"global_keyprefix": env.prefix},
    )
    qk, qc = f"k-{uuid.uuid4().hex[:8]}", f"c-{uuid.uuid4().hex[:8]}"
    try:
        env.start_worker("-Q", qk, "-c", "1", name="k1")
        env.start_celery_worker_on(qc, name="c1")
        yield Fleet(env, redis_tasks, celery, qk, qc)
    finally:
        celery.close()
        redis_tasks.app.close()
        env.close()
        mp.undo()


def _running(fleet: Fleet, task_id: str, kind: str = "start") -> bool:
    return fleet.env.ledger_entries(kind)[task_id] == 1


def test_celery_inspect_lists_a_celeriac_worker_and_its_running_task(fleet):
    result = fleet.tasks.sleepy.apply_async((2,), queue=fleet.qk)
    wait_for(lambda: _running(fleet, result.id), 15, "the task to start")
    inspect = fleet.celery.control.inspect(timeout=1.0, destination=["k1@e2e"])
    assert inspect.ping() == {"k1@e2e": {"ok": "pong"}}
    active = inspect.active()
    assert list(active) == ["k1@e2e"]
    [info] = active["k1@e2e"]
    assert (info["id"], info["name"], info["args"]) == (result.id, "interop.sleepy", [2])
    assert info["hostname"] == "k1@e2e" and info["acknowledged"] is True
    assert info["delivery_info"]["routing_key"] == fleet.qk
    assert isinstance(info["worker_pid"], int) and info["time_start"] > 0
    assert result.get(timeout=10) == 2


def test_celeriac_cli_lists_a_celery_worker(fleet):
    out = fleet.cli("inspect", "ping", "-d", "c1@e2e")
    assert out.returncode == 0, out.stderr
    assert out.stdout == "-> c1@e2e: OK\n    pong\n\n1 node online.\n"
    both = fleet.cli("status", "-d", "c1@e2e,k1@e2e")
    assert both.stdout == "-> c1@e2e: OK\n-> k1@e2e: OK\n\n2 nodes online.\n"


def test_celery_revoke_stops_a_pending_task_on_a_celeriac_worker(fleet):
    blocker = fleet.tasks.sleepy.apply_async((1.5,), queue=fleet.qk)
    wait_for(lambda: _running(fleet, blocker.id), 15, "the blocker to start")
    pending = fleet.tasks.add.apply_async((1, 2), queue=fleet.qk)
    fleet.celery.control.revoke(pending.id)
    assert blocker.get(timeout=10) == 1.5
    wait_for(lambda: fleet.tasks.app.AsyncResult(pending.id).state == states.REVOKED, 10, "REVOKED")
    time.sleep(0.5)  # it would have run by now: the worker is idle
    assert fleet.env.ledger_entries("run")[pending.id] == 0


def test_celeriac_revoke_stops_a_pending_task_on_a_celery_worker(fleet):
    blocker = fleet.celery.send_task("interop.sleepy", (1.5,), queue=fleet.qc)
    wait_for(lambda: blocker.state == "STARTED" or _celery_busy(fleet), 15, "the blocker")
    pending = fleet.tasks.add.apply_async((2, 3), queue=fleet.qc)
    fleet.tasks.app.control.revoke(pending.id)
    assert blocker.get(timeout=10) == 1.5
    time.sleep(1.0)  # the Celery worker has had the revoked task in hand by now
    assert fleet.tasks.app.AsyncResult(pending.id).state == states.REVOKED
    assert "interop.add[" + pending.id + "] succeeded" not in fleet.env.log(fleet.env.workers[1])


def _celery_busy(fleet: Fleet) -> bool:
    return b"interop.sleepy" in fleet.env.workers[1].log_path.read_bytes()


def test_terminate_stops_a_running_task_both_ways(fleet):
    ours = fleet.tasks.sleepy.apply_async((30,), queue=fleet.qk)
    wait_for(lambda: _running(fleet, ours.id), 15, "our task to start")
    fleet.celery.control.revoke(ours.id, terminate=True, signal="SIGKILL")
    wait_for(lambda: fleet.tasks.app.AsyncResult(ours.id).state == states.REVOKED, 10, "REVOKED")
    theirs = fleet.celery.send_task("interop.sleepy", (30,), queue=fleet.qc)
    wait_for(
        lambda: (
            f"Task interop.sleepy[{theirs.id}] received".encode()
            in fleet.env.workers[1].log_path.read_bytes()
        ),
        15,
        "their task to start",
    )
    replies = fleet.tasks.app.control.revoke(
        theirs.id, terminate=True, reply=True, timeout=2.0, destination=["c1@e2e"]
    )
    assert replies == [{"c1@e2e": {"ok": f"terminate: {theirs.id}"}}]
    wait_for(lambda: theirs.state == states.REVOKED, 10, "their task REVOKED")
    assert fleet.env.ledger_entries("end")[ours.id] == 0
