"""The remote-control CLI on SQLite against a real prefork worker (children consume)."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import pytest

from celeriac import states

from .conftest import HERE, Env, wait_for

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def sqlite_fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Env, Any]]:
    mp = pytest.MonkeyPatch()
    env = Env(tmp_path_factory.mktemp("ctl-sqlite"))
    mp.setenv("CELERIAC_BROKER_URL", env.url)
    mp.setenv("E2E_LEDGER", str(env.ledger))
    mp.syspath_prepend(str(HERE))
    import e2e_tasks

    e2e_tasks.app.conf.update(broker_url=env.url, result_backend=None)
    e2e_tasks.app.close()
    try:
        env.start_worker("-c", "1", "-P", "prefork", name="w1")
        yield env, e2e_tasks
    finally:
        env.close()
        e2e_tasks.app.close()
        mp.undo()


def cli(env: Env, *args: str) -> subprocess.CompletedProcess[str]:
    argv = [sys.executable, "-m", "celeriac", "-A", "e2e_tasks:app", *args]
    return subprocess.run(
        argv, env=env.env, cwd=env.tmp, capture_output=True, text=True, timeout=30
    )


def test_inspect_control_and_status_from_the_shell(sqlite_fleet):
    env, tasks = sqlite_fleet
    assert cli(env, "inspect", "ping").stdout == "-> w1@e2e: OK\n    pong\n\n1 node online.\n"
    assert cli(env, "status").stdout == "-> w1@e2e: OK\n\n1 node online.\n"
    result = tasks.sleepy.delay(30)
    wait_for(lambda: env.ledger_entries("start")[result.id] == 1, 15, "the task to start")
    active = cli(env, "inspect", "active", "--json")
    [info] = __import__("json").loads(active.stdout)["w1@e2e"]
    assert (info["id"], info["name"], info["args"]) == (result.id, "e2e_tasks.sleepy", [30])
    queried = cli(env, "inspect", "query_task", result.id, "--json").stdout
    assert __import__("json").loads(queried)["w1@e2e"][result.id][0] == "active"
    revoke = cli(env, "control", "revoke", result.id, "--terminate")
    assert revoke.stdout == f"-> w1@e2e: OK\n    terminate: {result.id}\n\n1 node online.\n"
    wait_for(lambda: result.state == states.REVOKED, 10, "REVOKED")
    assert env.ledger_entries("end")[result.id] == 0
    # the supervisor started a new child, which runs the next task
    assert tasks.add.delay(2, 3).get(timeout=15) == 5


def test_a_command_the_pool_cannot_honour_gets_a_typed_reply(sqlite_fleet):
    env, tasks = sqlite_fleet
    grow = cli(env, "control", "pool_grow", "10")
    assert grow.stdout == (
        "-> w1@e2e: ERROR\n    pool_grow: w1@e2e runs 1 and may grow to 4 at most "
        "(worker_max_pool_size)\n\n1 node online.\n"
    )
    replies = tasks.app.control.broadcast("pool_shrink", {"n": 1}, reply=True, timeout=2.0)
    assert replies[0]["w1@e2e"]["unsupported"] is True
    none = cli(env, "inspect", "ping", "-d", "nobody@nowhere", "-t", "0.3")
    assert (none.returncode, none.stderr) == (1, "Error: no nodes replied within 0.3s\n")
