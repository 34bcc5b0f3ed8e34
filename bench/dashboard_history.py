"""The dashboard's task list with a large history: how long the page takes to answer.

    .venv/bin/python bench/dashboard_history.py [--rows 1000000] [--repeat 20] [--file PATH]

Fills a history file with ``--rows`` finished tasks (kept with ``--file`` for the next run),
serves the dashboard with uvicorn on a free loopback port (no recorder, no cluster poll: only
the pages) and times whole HTTP requests for the task list: the first page, a state filter, an
exact name, a text search that matches often, and the 20th page reached by its cursor. Medians
and the slowest of ``--repeat`` requests each, in milliseconds.
"""

from __future__ import annotations

import argparse
import random
import socket
import statistics
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

import uvicorn

from celeriac import Celeriac
from celeriac.dashboard.app import create_app
from celeriac.dashboard.config import DashboardConfig
from celeriac.dashboard.history import TaskRow
from celeriac.dashboard.sqlite_history import SQLiteHistory

NAMES = [f"proj.tasks.task_{i}" for i in range(40)]
STATES = ["SUCCESS"] * 18 + ["FAILURE", "REVOKED"]


def fill(store: SQLiteHistory, rows: int) -> None:
    have = store.count()
    rng = random.Random(7)
    start = time.time() - rows * 0.01
    batch: list[TaskRow] = []
    for i in range(have, rows):
        at = start + i * 0.01
        state = rng.choice(STATES)
        runtime = rng.expovariate(20)
        batch.append(
            TaskRow(
                uuid=f"{i:08x}-0000-4000-8000-{rng.getrandbits(48):012x}",
                name=rng.choice(NAMES),
                state=state,
                worker=f"celeriac@host{i % 8}",
                queue="celery",
                args=f"({i}, {rng.randint(0, 1000)})",
                kwargs="{}",
                result=str(i) if state == "SUCCESS" else None,
                exception="ValueError('bad input')" if state == "FAILURE" else None,
                traceback="Traceback (most recent call last): ..." if state == "FAILURE" else None,
                runtime=runtime,
                retries=0,
                seen_at=at,
                sent_at=at,
                received_at=at,
                started_at=at,
                finished_at=at + runtime,
                updated_at=at + runtime,
            )
        )
        if len(batch) == 50_000:
            store.insert_rows(batch)
            batch = []
    if batch:
        store.insert_rows(batch)


def serve(store_path: Path) -> tuple[uvicorn.Server, str]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    app = Celeriac("bench", broker_url="memory://", result_backend=None)
    config = DashboardConfig(port=port, history_url=f"sqlite:///{store_path}")
    server = uvicorn.Server(
        uvicorn.Config(create_app(app, config, background=False), port=port, log_level="warning")
    )
    threading.Thread(target=server.run, daemon=True).start()
    while not server.started:
        time.sleep(0.05)
    return server, f"http://127.0.0.1:{port}"


def timed(url: str, repeat: int) -> tuple[float, float, int]:
    times = []
    size = 0
    for _ in range(repeat):
        t0 = time.perf_counter()
        with urllib.request.urlopen(url, timeout=30) as r:
            size = len(r.read())
        times.append((time.perf_counter() - t0) * 1000)
    return statistics.median(times), max(times), size


def cursor_of_page(base: str, n: int) -> str:
    import re

    url = base + "/tasks"
    for _ in range(n - 1):
        with urllib.request.urlopen(url, timeout=30) as r:
            body = r.read().decode()
        found = re.search(r'id="older" href="([^"]+)"', body)
        assert found, "no older page"
        url = base + found.group(1).replace("&amp;", "&").removeprefix(base)
    return url


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--repeat", type=int, default=20)
    parser.add_argument("--file", type=Path)
    opts = parser.parse_args()
    path = opts.file or Path(tempfile.mkdtemp()) / "history.sqlite3"
    store = SQLiteHistory(str(path))
    t0 = time.perf_counter()
    fill(store, opts.rows)
    print(f"history: {store.count()} tasks in {path} (filled in {time.perf_counter() - t0:.1f}s)")
    store.close()
    server, base = serve(path)
    try:
        cases = {
            "first page": base + "/tasks",
            "state=FAILURE": base + "/tasks?state=FAILURE",
            "name=proj.tasks.task_7": base + "/tasks?name=proj.tasks.task_7",
            "q=task_1 (text search)": base + "/tasks?q=task_1",
            "q=nowhere (matches none)": base + "/tasks?q=nowhere",
            "20th page (cursor)": cursor_of_page(base, 20),
        }
        print(f"{'request':28} {'median ms':>10} {'max ms':>8} {'bytes':>8}")
        for label, url in cases.items():
            median, worst, size = timed(url, opts.repeat)
            print(f"{label:28} {median:10.1f} {worst:8.1f} {size:8d}")
    finally:
        server.should_exit = True


if __name__ == "__main__":
    main()
