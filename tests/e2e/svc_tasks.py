"""Tasks for tests/e2e/test_worker_service.py (the broker comes from CELERIAC_BROKER_URL)."""

from __future__ import annotations

import time

from celeriac import Celeriac, SoftTimeLimitExceeded

app = Celeriac("svc_tasks")


@app.task
def add(x: int, y: int) -> int:
    return x + y


@app.task
def sleepy(seconds: float) -> str:
    time.sleep(seconds)
    return "slept"


@app.task
def stubborn(seconds: float) -> str:
    """Ignores its soft time limit: only the hard one ends it."""
    try:
        time.sleep(seconds)
    except SoftTimeLimitExceeded:
        time.sleep(seconds)
    return "slept"
