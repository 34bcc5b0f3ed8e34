"""Celeriac tasks for the RabbitMQ end-to-end tests; ``celery_amqp_tasks.py`` has the same names
for a stock Celery worker and client."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

from celeriac import Broadcast, Celeriac, Exchange, Queue

_options = {}
if os.environ.get("E2E_MAX_PRIORITY"):
    _options["max_priority"] = int(os.environ["E2E_MAX_PRIORITY"])


def _queues() -> list[Queue] | None:
    """``E2E_TASK_QUEUES``: JSON ``[[queue, exchange, type, routing key], ...]``."""
    spec = json.loads(os.environ.get("E2E_TASK_QUEUES") or "null")
    if spec is None:
        return None
    return [
        Broadcast(q) if kind == "fanout" else Queue(q, Exchange(ex, type=kind), routing_key=key)
        for q, ex, kind, key in spec
    ]


app = Celeriac(
    "amqp_tasks", broker_transport_options=_options, task_acks_late=True, task_queues=_queues()
)
LEDGER = Path(os.environ.get("E2E_LEDGER", "ledger"))


def _record(kind: str, task_id: str | None) -> None:
    with open(LEDGER / f"{os.getpid()}.log", "a") as f:
        f.write(f"{kind} {task_id} {time.time():.6f}\n")


@app.task(name="interop.add", bind=True)
def add(self, x: int, y: int = 0) -> int:
    _record("run", self.request.id)
    return x + y


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


@app.task(name="interop.die", bind=True)
def die(self) -> None:
    """Ends its own process every time (as a segfault would): a poison task."""
    _record("start", self.request.id)
    os._exit(3)
