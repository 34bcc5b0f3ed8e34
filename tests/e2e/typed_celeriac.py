"""The Celeriac side of tests/e2e/test_typed_interop.py (same task name as typed_celery)."""

from __future__ import annotations

import os
from typing import Any

from celeriac import Celeriac

app = Celeriac("typed_celeriac", task_default_queue=os.environ.get("TYPED_QUEUE", "typed"))


@app.task(name="typed.describe")
def describe(*values: Any) -> list[Any]:
    """The type of each argument as this worker decoded it, and the values back."""
    return [[type(v).__name__ for v in values], list(values)]
