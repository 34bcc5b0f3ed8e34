"""Tasks for end-to-end tests. Every execution appends its task id to a per-process ledger
file, so tests can count executions across worker processes without a shared lock."""

from __future__ import annotations

import os
import time
from pathlib import Path

from celeriac import Celeriac

app = Celeriac(
    "e2e_tasks",
    broker_transport_options={"visibility_timeout": float(os.environ.get("E2E_VT", "30"))},
)
LEDGER = Path(os.environ.get("E2E_LEDGER", "ledger"))

if os.environ.get("E2E_CHILD_CRASH"):
    from celeriac import signals

    # Every prefork child dies as it starts (a broken import in real life).
    signals.worker_process_init.connect(lambda sender, **kw: os._exit(5))


def _record(kind: str, task_id: str | None) -> None:
    with open(LEDGER / f"{os.getpid()}.log", "a") as f:
        f.write(f"{kind} {task_id} {time.time():.6f}\n")


@app.task(bind=True)
def add(self, x: int, y: int) -> int:
    _record("run", self.request.id)
    return x + y


@app.task(bind=True)
def sleepy(self, seconds: float) -> float:
    _record("start", self.request.id)
    time.sleep(seconds)
    _record("end", self.request.id)
    return seconds


@app.task(bind=True, acks_late=False)
def sleepy_early(self, seconds: float) -> float:
    """:func:`sleepy`, acknowledged on receipt."""
    _record("start", self.request.id)
    time.sleep(seconds)
    _record("end", self.request.id)
    return seconds


@app.task(bind=True)
def stamp(self) -> float:
    now = time.time()
    _record("run", self.request.id)
    return now


@app.task(bind=True)
async def asleep(self, seconds: float) -> float:
    import asyncio

    _record("start", self.request.id)
    await asyncio.sleep(seconds)
    _record("end", self.request.id)
    return seconds


@app.task(bind=True, time_limit=1)
def forever(self) -> None:
    _record("start", self.request.id)
    while True:
        time.sleep(0.01)


@app.task(bind=True, time_limit=0.5)
def gil_hog(self) -> None:
    """Stuck in C code that never releases the GIL (catastrophic regex backtracking)."""
    import re

    _record("start", self.request.id)
    re.match(r"(a|aa)+$", "a" * 60 + "b")


@app.task(bind=True)
def crash_once(self) -> str:
    """Ends its process the first time it runs (as a segfault would); succeeds after."""
    earlier = any(f"start {self.request.id} " in path.read_text() for path in LEDGER.glob("*.log"))
    _record("start", self.request.id)
    if not earlier:
        os._exit(3)
    return "survived"


@app.task(bind=True, soft_time_limit=0.5)
def soft(self) -> str:
    from celeriac import SoftTimeLimitExceeded

    _record("start", self.request.id)
    try:
        while True:
            time.sleep(0.01)
    except SoftTimeLimitExceeded:
        return "cleaned up"


@app.task(bind=True, autoretry_for=(IOError,), retry_backoff=0.2, retry_jitter=False, max_retries=3)
def flaky_io(self, fail_times: int) -> int:
    _record("run", self.request.id)
    if self.request.retries < fail_times:
        raise OSError(f"attempt {self.request.retries + 1} failed")
    return self.request.retries


@app.task(bind=True, global_rate_limit="20/s")
def limited(self, i: int) -> int:
    _record("run", self.request.id)
    return i


@app.task(bind=True, rate_limit="10/s")
def throttled(self, i: int) -> int:
    _record("run", self.request.id)
    return i


@app.task
def pid() -> int:
    return os.getpid()


@app.task(bind=True)
def tsum(self, values: list[int]) -> int:
    _record("body", self.request.id)
    return sum(values)


@app.task
def mul(x: int, y: int) -> int:
    return x * y


@app.task(bind=True, max_retries=3)
def flaky_once(self, x: int) -> int:
    """Fails its first attempt, then succeeds."""
    _record("run", self.request.id)
    if self.request.retries == 0:
        raise self.retry(countdown=0.05)
    return x


@app.task
def inc_or_fail(x: int, fail_at: int) -> int:
    if x + 1 == fail_at:
        raise ValueError(f"failed at step {fail_at}")
    return x + 1


@app.task(bind=True)
def on_error(self, task_id: str) -> str:
    _record("errback", task_id)
    return task_id


@app.task(bind=True)
def slow_add(self, x: int, y: int) -> int:
    _record("run", self.request.id)
    time.sleep(0.02)
    return x + y


def _sleep_holding_the_gil(seconds: float) -> None:
    """C's sleep() called without releasing the GIL: no other thread of this process runs."""
    import ctypes

    ctypes.PyDLL(None).usleep(int(seconds * 1_000_000))


@app.task(bind=True)
def gil_sleep(self, seconds: float) -> float:
    _record("start", self.request.id)
    _sleep_holding_the_gil(seconds)
    _record("end", self.request.id)
    return seconds


@app.task(bind=True)
def hog_memory(self, mib: int, seconds: float, stubborn: bool = False) -> int:
    """Holds ``mib`` MiB (touched, so resident) for ``seconds``; ``stubborn``: swallows any
    exception raised in it meanwhile and goes on (a task that will not stop)."""
    _record("start", self.request.id)
    held: dict[str, bytes] = {}
    deadline = time.monotonic() + seconds
    while True:
        try:  # the whole body: the exception can come between any two bytecodes
            held.setdefault("block", b"x" * (mib * 1024 * 1024))
            while time.monotonic() < deadline:
                time.sleep(0.01)
            return len(held["block"])
        except Exception:
            if not stubborn:
                raise


if os.environ.get("E2E_DIE_PUBLISHING"):
    from celeriac import signals

    _moment = os.environ["E2E_DIE_PUBLISHING"]  # "before" or "after"

    def _die_once(sender: str | None = None, **kw: object) -> None:
        """End this process as it sends a chord body, once per test (a crash between a
        chord's claim and its body's sending, or between the sending and the chord's done)."""
        if sender != "e2e_tasks.tsum" or any(LEDGER.glob("died-*")):
            return
        (LEDGER / f"died-{os.getpid()}").touch()
        os._exit(9)

    _signal = signals.before_task_publish if _moment == "before" else signals.after_task_publish
    _signal.connect(_die_once)
