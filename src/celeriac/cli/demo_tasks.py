"""Tasks the ``celeriac demo`` worker runs."""

from __future__ import annotations

import time

from celeriac import Celeriac

app = Celeriac("celeriac.demo")


@app.task
def add(x: int, y: int) -> int:
    return x + y


@app.task
def mul(x: int, y: int) -> int:
    return x * y


@app.task(bind=True, max_retries=3, default_retry_delay=0.2)
def flaky(self: object, fail_times: int) -> str:
    """Fails ``fail_times`` times, then succeeds: retries are new messages, not sleeps."""
    retries: int = self.request.retries  # type: ignore[attr-defined]
    if retries < fail_times:
        raise self.retry(exc=ConnectionError(f"attempt {retries + 1} failed"))  # type: ignore[attr-defined]
    return f"succeeded after {retries} retries"


@app.task
def divide(x: float, y: float) -> float:
    return x / y


@app.task
def stamp() -> float:
    return time.time()
