"""Countdowns from a Celeriac client with default options on Redis, with a Celeriac worker
alone on the queue: due ones run on time, the others wait in Redis (the worker fetched them
early and parked them), none in the worker. With a Celery worker alone on the queue, see
``test_redis.py::test_celeriac_client_to_celery_worker``."""

from __future__ import annotations

import time

import pytest
import redis

from tests import redis_support

from .test_redis import redis_e2e  # noqa: F401 - fixture

pytestmark = [pytest.mark.e2e, pytest.mark.redis]


def test_countdowns_wait_in_redis_not_in_a_celeriac_worker(redis_e2e):  # noqa: F811
    env, tasks = redis_e2e
    env.start_worker("-c", "2")
    later = [tasks.stamp.apply_async(countdown=120) for _ in range(300)]
    sent = time.time()
    soon = tasks.stamp.apply_async(countdown=1)
    assert 1.0 <= soon.get(timeout=10) - sent <= 2.5
    client = redis.Redis.from_url(redis_support.base_url())
    try:
        queue = tasks.app.conf.task_default_queue
        parked = client.zrange(f"{env.prefix}celeriac.delayed.{queue}", 0, -1)
        assert len(parked) == 300
        assert client.llen(f"{env.prefix}{queue}") == 0
        assert client.hlen(f"{env.prefix}unacked") == 0  # no lease held on any of them
    finally:
        client.close()
    assert {r.state for r in later} == {"PENDING"}
