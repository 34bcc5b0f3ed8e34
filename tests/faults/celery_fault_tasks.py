"""The fault suite's recording task for a stock Celery worker (the mixed-fleet scenario, #23):
same name, same ledger, so either kind of worker can run what the other abandoned."""

from __future__ import annotations

import json
import os
import time
from typing import Any

from celery import Celery

from tests.faults.ledger import Ledger

CONF = json.loads(os.environ.get("FAULT_CELERY_CONF") or "{}")
app = Celery("celery_fault_tasks", broker=CONF.pop("broker_url"), backend=CONF.pop("backend", None))
app.conf.update(
    task_acks_late=True,
    worker_prefetch_multiplier=1,
    broker_connection_retry_on_startup=True,
    worker_hijack_root_logger=False,
    **CONF,
)
LEDGER = Ledger(os.environ.get("FAULT_LEDGER", "ledger.sqlite3"))


@app.task(name="faults.rec", bind=True)
def rec(self: Any, seconds: float = 0.0) -> str:
    redelivered = bool((self.request.delivery_info or {}).get("redelivered"))
    row = LEDGER.start(self.request.id, self.name, 2 if redelivered else 1)
    if seconds:
        time.sleep(seconds)
    LEDGER.end(row)
    return str(self.request.id)
