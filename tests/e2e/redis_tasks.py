"""Celeriac tasks for the Redis end-to-end and interop tests. ``celery_tasks.py`` defines the
same names for a stock Celery worker, so either kind of worker can serve either kind of client."""

from __future__ import annotations

import os
import time
from pathlib import Path

from celeriac import Broadcast, Celeriac

app = Celeriac(
    "redis_tasks",
    broker_transport_options={
        "visibility_timeout": float(os.environ.get("E2E_VT", "30")),
        "sweep_interval": 0.25,
    },
    task_acks_late=True,
    # E2E_BROADCAST names a Broadcast queue for the routing tests
    task_queues=[Broadcast(b) for b in [os.environ.get("E2E_BROADCAST")] if b] or None,
)
LEDGER = Path(os.environ.get("E2E_LEDGER", "ledger"))


def _record(kind: str, task_id: str | None) -> None:
    with open(LEDGER / f"{os.getpid()}.log", "a") as f:
        f.write(f"{kind} {task_id} {time.time():.6f}\n")


@app.task(name="interop.add", bind=True)
def add(self, x: int, y: int = 0) -> int:
    _record("run", self.request.id)
    return x + y


@app.task(name="interop.boom")
def boom(message: str, code: int) -> None:
    raise ValueError(message, code)


@app.task(name="interop.flaky", bind=True, max_retries=3)
def flaky(self, fail_times: int) -> int:
    _record("run", self.request.id)
    if self.request.retries < fail_times:
        raise self.retry(countdown=0.2)
    return int(self.request.retries)


@app.task(name="interop.stamp", bind=True)
def stamp(self) -> float:
    _record("run", self.request.id)
    return time.time()


@app.task(name="interop.sleepy", bind=True)
def sleepy(self, seconds: float) -> float:
    _record("start", self.request.id)
    time.sleep(seconds)
    _record("end", self.request.id)
    return seconds


@app.task(name="interop.tsum", bind=True)
def tsum(self, values: list[int]) -> int:
    _record("body", self.request.id)
    return sum(values)


@app.task(name="interop.slow_add", bind=True)
def slow_add(self, x: int, y: int) -> int:
    _record("run", self.request.id)
    time.sleep(0.02)
    return x + y
