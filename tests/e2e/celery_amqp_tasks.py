"""The interop task names for a stock Celery worker on RabbitMQ, results over ``rpc://``."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

from celery import Celery

app = Celery(
    "celery_amqp_tasks",
    broker=os.environ.get("INTEROP_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672//"),
    backend="rpc://",
)
if os.environ.get("E2E_TASK_QUEUES"):  # the same task_queues as amqp_tasks.py, kombu's way
    from kombu import Exchange, Queue
    from kombu.common import Broadcast

    app.conf.task_queues = [
        Broadcast(q) if kind == "fanout" else Queue(q, Exchange(ex, type=kind), routing_key=key)
        for q, ex, kind, key in json.loads(os.environ["E2E_TASK_QUEUES"])
    ]
app.conf.update(
    task_acks_late=True,
    worker_prefetch_multiplier=1,
    broker_connection_retry_on_startup=True,
    worker_hijack_root_logger=False,
)


@app.task(name="interop.add")
def add(x: int, y: int = 0) -> int:
    return x + y


@app.task(name="interop.sleepy", bind=True)
def sleepy(self, seconds: float) -> float:
    """As amqp_tasks.sleepy: start and end go to the test's ledger."""
    for kind in ("start", "end"):
        with open(Path(os.environ.get("E2E_LEDGER", ".")) / f"{os.getpid()}.log", "a") as f:
            f.write(f"{kind} {self.request.id} {time.time():.6f}\n")
        if kind == "start":
            time.sleep(seconds)
    return seconds
