"""The interop task names for a stock Celery worker on RabbitMQ, results over ``rpc://``."""

from __future__ import annotations

import os

from celery import Celery

app = Celery(
    "celery_amqp_tasks",
    broker=os.environ.get("INTEROP_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672//"),
    backend="rpc://",
)
app.conf.update(
    task_acks_late=True,
    worker_prefetch_multiplier=1,
    broker_connection_retry_on_startup=True,
    worker_hijack_root_logger=False,
)


@app.task(name="interop.add")
def add(x: int, y: int = 0) -> int:
    return x + y
