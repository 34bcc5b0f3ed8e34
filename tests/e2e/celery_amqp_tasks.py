"""The interop task names for a stock Celery worker on RabbitMQ, results over ``rpc://``."""

from __future__ import annotations

import json
import os

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
