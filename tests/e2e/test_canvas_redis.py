"""Issue #5's canvas guarantees on Redis, with real workers, and a canvas a Celery client built."""

from __future__ import annotations

import os
import signal

import pytest

from celeriac import chord

from .conftest import wait_for
from .test_redis import celery_client, redis_e2e  # noqa: F401 - fixtures

pytestmark = [pytest.mark.e2e, pytest.mark.redis]


def test_chord_of_1000_on_redis_runs_its_body_once(redis_e2e):  # noqa: F811
    env, tasks = redis_e2e
    env.start_worker("-c", "2")
    env.start_worker("-c", "2")
    result = chord(tasks.add.s(i, i) for i in range(1000))(tasks.tsum.s())
    assert result.get(timeout=60) == sum(2 * i for i in range(1000))
    assert sum(env.ledger_entries("body").values()) == 1


def test_chord_on_redis_survives_a_worker_killed_midway(redis_e2e):  # noqa: F811
    env, tasks = redis_e2e
    env.set_vt(2)
    victim = env.start_worker("-c", "2")
    env.start_worker("-c", "2")
    result = chord(tasks.slow_add.s(i, 1) for i in range(300))(tasks.tsum.s())
    wait_for(lambda: sum(env.ledger_entries("run").values()) > 60, 30, "headers to run")
    os.kill(victim.pid, signal.SIGKILL)
    assert result.get(timeout=60) == sum(i + 1 for i in range(300))
    assert sum(env.ledger_entries("body").values()) == 1


def test_chain_and_group_built_by_a_celery_client_run_on_celeriac(redis_e2e, celery_client):  # noqa: F811
    from celery import chain as celery_chain
    from celery import group as celery_group

    env, _ = redis_e2e
    env.start_worker("-c", "2")
    add = celery_client.signature("interop.add")
    flow = celery_chain(add.clone((1, 2)), add.clone((10,)), add.clone((100,)))
    assert flow.apply_async().get(timeout=20) == 113
    grouped = celery_group(add.clone((i, i)) for i in range(10)).apply_async()
    assert grouped.get(timeout=20) == [2 * i for i in range(10)]
