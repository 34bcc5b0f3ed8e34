"""Tasks for tests/e2e/test_autoscale_sqlite.py (the broker comes from CELERIAC_BROKER_URL).
Each run appends "<start> <end>" to a ledger file named after the process that ran it."""

from __future__ import annotations

import os
import time
from pathlib import Path

from celeriac import Celeriac

app = Celeriac("autoscale_tasks")
app.conf.worker_autoscale_keepalive = float(os.environ.get("AUTOSCALE_KEEPALIVE", "30"))
LEDGER = Path(os.environ.get("E2E_LEDGER", "ledger"))


@app.task
def nap(seconds: float) -> None:
    start = time.time()
    time.sleep(seconds)
    with open(LEDGER / f"{os.getpid()}.log", "a") as f:
        f.write(f"{start:.6f} {time.time():.6f}\n")
