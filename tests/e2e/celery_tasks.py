"""The same task names as ``redis_tasks.py``, for a real Celery worker and a real Celery client."""

from __future__ import annotations

import os
import time

from celery import Celery

URL = os.environ.get("INTEROP_REDIS_URL", "redis://127.0.0.1:6379/13")
PREFIX = os.environ.get("INTEROP_PREFIX", "")

VT = os.environ.get("INTEROP_VT")  # set: restore abandoned deliveries quickly (every second)
RESTORE = {"visibility_timeout": float(VT), "unacked_restore_interval": 1} if VT else {}

app = Celery("celery_tasks", broker=URL, backend=URL)
app.conf.update(
    broker_transport_options={
        "global_keyprefix": PREFIX,
        **RESTORE,
        "unacked_restore_throttle": 1,
    },
    result_backend_transport_options={"global_keyprefix": PREFIX},
    task_acks_late=True,
    worker_prefetch_multiplier=1,
    broker_connection_retry_on_startup=True,
    worker_hijack_root_logger=False,
)


@app.task(name="interop.add")
def add(x: int, y: int = 0) -> int:
    return x + y


@app.task(name="interop.boom")
def boom(message: str, code: int) -> None:
    raise ValueError(message, code)


@app.task(name="interop.flaky", bind=True, max_retries=3)
def flaky(self, fail_times: int) -> int:
    if self.request.retries < fail_times:
        raise self.retry(countdown=0.2)
    return int(self.request.retries)


@app.task(name="interop.stamp")
def stamp() -> float:
    return time.time()


@app.task(name="interop.tsum")
def tsum(values: list[int]) -> int:
    return sum(values)


@app.task(name="interop.sleepy")
def sleepy(seconds: float) -> float:
    time.sleep(seconds)
    return seconds
