"""Procrastinate on PostgreSQL (it stores no results: a job's status is its completion)."""

from __future__ import annotations

import os

from procrastinate import App, PsycopgConnector

app = App(connector=PsycopgConnector(conninfo=os.environ["BENCH_PG_URL"]))


@app.task(queue="bench")
def echo(i: int) -> int:
    return i
