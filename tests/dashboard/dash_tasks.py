"""Tasks for the dashboard's tests. Each run appends its task id to a per-process ledger file,
so tests can tell exactly which tasks ran."""

from __future__ import annotations

import os
import time
from pathlib import Path

from celeriac import Celeriac
from celeriac.exceptions import Reject

app = Celeriac("dash_tasks")
# A queued task is on the dashboard before a worker takes it (as PENDING).
app.conf.task_send_sent_event = True
app.conf.dashboard_masked_tasks = ["dash_tasks.secret_*"]
LEDGER = Path(os.environ.get("DASH_LEDGER", "ledger"))


def _record(task_id: str | None) -> None:
    with open(LEDGER / f"{os.getpid()}.log", "a") as f:
        f.write(f"run {task_id}\n")


@app.task(bind=True)
def add(self, x: int, y: int) -> int:
    _record(self.request.id)
    return x + y


@app.task(bind=True)
def sleepy(self, seconds: float) -> float:
    _record(self.request.id)
    time.sleep(seconds)
    return seconds


@app.task(bind=True)
def reject_first(self) -> str:
    """Set aside (dead-lettered) on its first delivery; succeeds when replayed."""
    marker = LEDGER / f"{self.request.id}.rejected"
    if not marker.exists():
        marker.touch()
        raise Reject("set aside on first delivery")
    _record(self.request.id)
    return "replayed"


@app.task(bind=True)
def secret_login(self, password: str) -> str:
    _record(self.request.id)
    return "ok"
