"""Celeriac on PostgreSQL: broker and results in one schema (``BENCH_PG_URL``)."""

from __future__ import annotations

import os

from celeriac import Celeriac

url = os.environ["BENCH_PG_URL"] + "?schema=celeriac"
app = Celeriac("bench", broker_url=url, result_backend=url)
app.conf.task_default_queue = "bench"


@app.task
def echo(i: int) -> int:
    return i
