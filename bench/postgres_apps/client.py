"""One system's client: ``client.py <system> enqueue N`` or ``client.py <system> roundtrip M``.

Prints one JSON object: enqueue's seconds for N sends (one at a time, timed around the loop
only, after one untimed warm-up send), or round trip's M latencies in seconds.
"""

from __future__ import annotations

import json
import os
import sys
import time
from typing import Any

import psycopg


def celeriac(action: str, n: int) -> Any:
    from celeriac_app import echo

    if action == "enqueue":
        echo.delay(-1)
        start = time.perf_counter()
        for i in range(n):
            echo.delay(i)
        return time.perf_counter() - start
    echo.delay(-1).get(timeout=30)
    out = []
    for i in range(n):
        t = time.perf_counter()
        assert echo.delay(i).get(timeout=30) == i
        out.append(time.perf_counter() - t)
    return out


def celery(action: str, n: int) -> Any:
    from celery_app import echo

    if action == "enqueue":
        echo.delay(-1)  # makes kombu's tables
        start = time.perf_counter()
        for i in range(n):
            echo.delay(i)
        return time.perf_counter() - start
    echo.delay(-1).get(timeout=30)
    out = []
    for i in range(n):
        t = time.perf_counter()
        assert echo.delay(i).get(timeout=30) == i
        out.append(time.perf_counter() - t)
    return out


def procrastinate(action: str, n: int) -> Any:
    from procrastinate_app import app, echo

    with app.open():
        if action == "enqueue":
            echo.defer(i=-1)
            start = time.perf_counter()
            for i in range(n):
                echo.defer(i=i)
            return time.perf_counter() - start
        # No result store: wait for the job's status, reading it every 0.5 ms on one connection.
        out = []
        with psycopg.connect(os.environ["BENCH_PG_URL"], autocommit=True) as conn:
            for i in range(-1, n):
                t = time.perf_counter()
                job_id = echo.defer(i=i)
                deadline = time.monotonic() + 30
                while (
                    conn.execute(
                        "SELECT status FROM procrastinate_jobs WHERE id = %s", (job_id,)
                    ).fetchone()[0]
                    != "succeeded"
                ):
                    assert time.monotonic() < deadline, "no result in 30 s"
                    time.sleep(0.0005)
                if i >= 0:
                    out.append(time.perf_counter() - t)
        return out


if __name__ == "__main__":
    system, action, count = sys.argv[1], sys.argv[2], int(sys.argv[3])
    print(json.dumps(globals()[system](action, count)))
