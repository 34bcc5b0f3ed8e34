"""A Celery app with ``typed.describe``, for tests/e2e/test_typed_interop.py."""

from __future__ import annotations

import os
from typing import Any

from celery import Celery

URL = os.environ.get("INTEROP_REDIS_URL", "redis://127.0.0.1:6379/13")
PREFIX = os.environ.get("INTEROP_PREFIX", "")

app = Celery("typed_celery", broker=URL, backend=URL)
app.conf.update(
    broker_transport_options={"global_keyprefix": PREFIX},
    result_backend_transport_options={"global_keyprefix": PREFIX},
    task_default_queue=os.environ.get("TYPED_QUEUE", "typed"),
    broker_connection_retry_on_startup=True,
    worker_hijack_root_logger=False,
)


@app.task(name="typed.describe")
def describe(*values: Any) -> list[Any]:
    """The type of each argument as this worker decoded it, and the values back."""
    return [[type(v).__name__ for v in values], list(values)]
