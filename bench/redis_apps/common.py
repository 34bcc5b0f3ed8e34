"""What every system's task does: count itself done with one Redis INCR (ANCHORS.md's task)."""

import os

import redis

_counter = redis.Redis.from_url(os.environ.get("BENCH_COUNT_URL", "redis://127.0.0.1:6379/14"))
KEY = os.environ.get("BENCH_COUNT_KEY", "bench:done")
#: Broker and results: a private DB and key prefix per run, deleted afterwards.
BROKER_DB_URL = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/14")
PREFIX = os.environ.get("BENCH_PREFIX", "bench:")


def done() -> None:
    _counter.incr(KEY)
