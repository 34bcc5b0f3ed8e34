"""Celeriac on Redis for the chord bench: broker and results under the run's key prefix."""

import os

from celeriac import Celeriac, chord  # noqa: F401 - chord is used by chord_client.py

URL = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/12")
PREFIX = os.environ.get("BENCH_PREFIX", "bench-chord:")
app = Celeriac(
    "bench_chord",
    broker=f"{URL}?global_keyprefix={PREFIX}",
    backend=f"{URL}?global_keyprefix={PREFIX}",
)


@app.task(name="bench.add")
def add(x: int, y: int) -> int:
    return x + y


@app.task(name="bench.tsum")
def tsum(values: list[int]) -> int:
    return sum(values)
