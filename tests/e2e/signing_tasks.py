"""Tasks for the signing end-to-end test: an app whose key comes from the environment
(``SIGNING_E2E_KEY``), on the Redis URL and key prefix the test gives (``CELERIAC_BROKER_URL``)."""

from __future__ import annotations

import os

from celeriac import Celeriac

app = Celeriac(
    "signing_tasks",
    task_default_queue=os.environ.get("SIGNING_E2E_QUEUE", "celery"),
    task_signing_key="env:SIGNING_E2E_KEY",
    result_signing=True,
)


@app.task(name="interop.add", bind=True)
def add(self, x: int, y: int = 0) -> int:
    return x + y


@app.task(name="signing.flaky", bind=True, max_retries=3)
def flaky(self, fail_times: int) -> int:
    if self.request.retries < fail_times:
        raise self.retry(countdown=0)
    return int(self.request.retries)
