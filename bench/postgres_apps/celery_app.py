"""Celery on PostgreSQL: kombu's SQLAlchemy transport and Celery's database result backend."""

from __future__ import annotations

import os

from celery import Celery

db = os.environ["BENCH_PG_URL"].replace("postgresql://", "postgresql+psycopg://", 1)
app = Celery("bench", broker=f"sqla+{db}", backend=f"db+{db}")
app.conf.task_default_queue = "bench"
app.conf.broker_connection_retry_on_startup = True


@app.task
def echo(i: int) -> int:
    return i
