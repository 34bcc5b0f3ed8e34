"""Recording tasks for the fault suite, imported by real ``celeriac worker`` processes.

``FAULT_CONF`` (JSON) holds the settings of the test (broker, backend, transport options,
``worker_max_deliveries``...), ``FAULT_TASK_QUEUES`` its ``task_queues``; ``FAULT_LEDGER`` is
the ledger file every run is written to (:mod:`tests.faults.ledger`).
``FAULT_KILL_AFTER_PUBLISH=<task name>`` makes the first process that publishes a message of
that task SIGKILL itself right after the publish returned (a worker dying between sending a
chord's body and acknowledging the header that completed it).
"""

from __future__ import annotations

import json
import os
import signal
import time
import uuid
from pathlib import Path
from typing import Any

from celeriac import Celeriac
from tests.faults.ledger import Ledger

app = Celeriac("fault_tasks", **json.loads(os.environ.get("FAULT_CONF") or "{}"))
if os.environ.get("FAULT_TASK_QUEUES"):  # JSON [[queue, exchange, type, routing key], ...]
    from celeriac import Exchange, Queue

    app.conf.task_queues = [
        Queue(q, Exchange(ex, type=kind), routing_key=key)
        for q, ex, kind, key in json.loads(os.environ["FAULT_TASK_QUEUES"])
    ]
LEDGER = Ledger(os.environ.get("FAULT_LEDGER", "ledger.sqlite3"))


class _Run:
    """Records a run in the ledger: start on entry, end on a normal return."""

    def __init__(self, task: Any) -> None:
        request = task.request
        self.row = LEDGER.start(request.id, task.name, request.delivery_count)

    def __enter__(self) -> _Run:
        return self

    def __exit__(self, *exc: object) -> None:
        if exc[0] is None:
            LEDGER.end(self.row)


@app.task(name="faults.rec", bind=True)
def rec(self: Any, seconds: float = 0.0) -> str:
    """Sleeps ``seconds``; returns its own id."""
    with _Run(self):
        if seconds:
            time.sleep(seconds)
        return str(self.request.id)


@app.task(name="faults.limited", bind=True, rate_limit=os.environ.get("FAULT_RATE_LIMIT") or None)
def limited(self: Any) -> None:
    """A task that this worker runs at most ``FAULT_RATE_LIMIT`` (e.g. ``100/s``) times."""
    with _Run(self):
        pass


@app.task(name="faults.token", bind=True)
def token(self: Any, then: str = "") -> str:
    """A value unique to this run (to tell which run's result was stored). ``then``: a fault
    asked of the test's proxy once the run is recorded, before the task returns, on its first
    delivery only."""
    with _Run(self):
        value = f"{os.getpid()}-{uuid.uuid4().hex}"
    if then and self.request.delivery_count == 1:
        from tests.faults.proxy import ask

        ask(int(os.environ["FAULT_PROXY_CONTROL"]), then)
    return value


@app.task(name="faults.crash", bind=True)
def crash(self: Any, code: int = 1) -> None:
    """Ends its own process every time it runs (a segfault or OOM kill would)."""
    _Run(self)
    os._exit(code)


@app.task(name="faults.killed_once", bind=True)
def killed_once(self: Any, seconds: float) -> str:
    """SIGKILLs its own process as its first delivery starts (a kill -9 that lands at the same
    point every time); later deliveries sleep ``seconds`` and return."""
    with _Run(self):
        if self.request.delivery_count == 1:
            os.kill(os.getpid(), signal.SIGKILL)
        time.sleep(seconds)
        return str(self.request.id)


@app.task(name="faults.gil_hog", bind=True)
def gil_hog(self: Any, seconds: float) -> float:
    """C code that holds the GIL for ``seconds`` (libc's usleep called without releasing it,
    as a long regex match or a C extension does): no other thread of the process runs."""
    import ctypes

    with _Run(self):
        ctypes.PyDLL(None).usleep(int(seconds * 1_000_000))
        return seconds


@app.task(name="faults.hog_memory", bind=True)
def hog_memory(self: Any, mb: int, seconds: float) -> int:
    """Allocates ``mb`` MiB in steps over ``seconds`` and holds it until it returns."""
    with _Run(self):
        chunks = []
        steps = max(1, mb // 16)
        for _ in range(steps):
            chunks.append(bytearray(16 * 1024 * 1024))  # touched: zero-filled pages count
            time.sleep(seconds / steps)
        return sum(len(c) for c in chunks) // (1024 * 1024)


@app.task(name="faults.tsum", bind=True)
def tsum(self: Any, values: list[int]) -> int:
    with _Run(self):
        return sum(values)


@app.task(name="faults.add", bind=True)
def add(self: Any, x: int, y: int) -> int:
    with _Run(self):
        return x + y


def _kill_after_publish(task_name: str) -> None:
    """Wrap the broker class's publishes: after the first publish of ``task_name`` returns,
    this process dies (once per test: a marker file next to the ledger says it happened)."""
    scheme = str(app.conf.broker_url).split("://", 1)[0].split("+", 1)[0]
    if scheme == "sqlite":
        from celeriac.transports.sqlite.broker import SQLiteBroker as cls
    elif scheme in ("redis", "rediss"):
        from celeriac.transports.redis.broker import RedisBroker as cls  # type: ignore[assignment]
    else:
        from celeriac.transports.amqp.broker import AMQPBroker as cls  # type: ignore[assignment]
    marker = Path(LEDGER.path).with_suffix(".killed")

    def die_if_sent(publications: Any) -> None:
        if not any(p.message.headers.get("task") == task_name for p in publications):
            return
        try:
            os.close(os.open(marker, os.O_CREAT | os.O_EXCL))
        except FileExistsError:
            return
        os.kill(os.getpid(), signal.SIGKILL)

    publish, publish_many = cls.publish, cls.publish_many

    def publish_wrapped(self: Any, publication: Any) -> None:
        publish(self, publication)
        die_if_sent([publication])

    def publish_many_wrapped(self: Any, publications: Any) -> None:
        publish_many(self, publications)
        die_if_sent(publications)

    cls.publish = publish_wrapped  # type: ignore[method-assign]
    cls.publish_many = publish_many_wrapped  # type: ignore[method-assign]


if os.environ.get("FAULT_KILL_AFTER_PUBLISH"):
    _kill_after_publish(os.environ["FAULT_KILL_AFTER_PUBLISH"])
