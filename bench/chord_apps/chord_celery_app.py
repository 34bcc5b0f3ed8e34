"""Celery 5 on Redis for the chord bench, with its defaults (prefork, prefetch x4, early ack)."""

import os

from celery import Celery, chord  # noqa: F401 - chord is used by chord_client.py

URL = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/12")
PREFIX = os.environ.get("BENCH_PREFIX", "bench-chord:")
app = Celery("bench_chord", broker=URL, backend=URL)
app.conf.update(
    broker_transport_options={"global_keyprefix": PREFIX},
    result_backend_transport_options={"global_keyprefix": PREFIX},
    broker_connection_retry_on_startup=True,
)


@app.task(name="bench.add")
def add(x: int, y: int) -> int:
    return x + y


@app.task(name="bench.tsum")
def tsum(values: list[int]) -> int:
    return sum(values)
