"""Celeriac vs Procrastinate vs Celery's SQLAlchemy transport, on one PostgreSQL, in one run.

    .venv/bin/python bench/postgres_vs_peers.py [--n 2000] [--calls 200] [--repeat 1]
        [--pg postgresql://postgres@127.0.0.1:5432/postgres] [--synchronous-commit on]

Every system runs the same task (takes an int, returns it) on the server at ``--pg``, each in a
database of its own made for the run (``CREATE DATABASE celeriac_bench_<random>``, dropped
after), all with the same ``synchronous_commit`` (``ALTER DATABASE ... SET``). Per system:

1. **enqueue/s**: N sends, one call at a time (``delay()``; Procrastinate ``defer()``), from one
   fresh client process with no worker running, timed around the send loop only;
2. **drain/s**: two worker processes started after the N tasks are queued (Celeriac and
   Celery: ``prefork -c 2``; Procrastinate: two ``worker`` processes, one job at a time each);
   N / wall time from start to the N-th completion (start-up included), counted every 20 ms
   in each system's own tables (Celeriac ``results``, Celery ``celery_taskmeta``, Procrastinate
   ``procrastinate_jobs.status``);
3. **round trip p50/p99 ms**: ``--calls`` sequential send-and-wait calls from a fresh client
   with the workers idle. Procrastinate stores no results: its client reads the job's status
   every 0.5 ms until it is ``succeeded``.

Celeriac runs with its defaults (prefetch multiplier 4, as Celery's). Then its ratios
against the faster peer (issue 17's target: drain and enqueue >= 2x).
Peers are measured only when their packages are installed: ``pip install procrastinate
sqlalchemy`` (Celery's SQLAlchemy transport and database backend need SQLAlchemy).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import psycopg
from sqlite_vs_huey import percentile, stop

HERE = Path(__file__).resolve().parent
APPS = HERE / "postgres_apps"
PY = sys.executable


@dataclass(frozen=True)
class System:
    name: str
    key: str  # the client.py function and the app module's prefix
    workers: list[list[str]]
    done_sql: str  # counts completed tasks in the system's own tables
    needs: tuple[str, ...] = ()


CELERIAC = [PY, "-m", "celeriac", "-A", "celeriac_app:app", "worker", "-l", "warning"]
CELERY = [PY, "-m", "celery", "-A", "celery_app", "worker", "-l", "warning", "-Q", "bench"]
PROCRASTINATE = [PY, "-m", "procrastinate", "--app=procrastinate_app.app", "worker"]

SYSTEMS = [
    System(
        "celeriac prefork -c 2",
        "celeriac",
        [[*CELERIAC, "-c", "2", "-P", "prefork", "-Q", "bench"]],
        "SELECT count(*) FROM celeriac.results WHERE status = 'SUCCESS'",
    ),
    System(
        "procrastinate 2 workers",
        "procrastinate",
        [[*PROCRASTINATE, "--concurrency=1", "--queues=bench"]] * 2,
        "SELECT count(*) FROM procrastinate_jobs WHERE status = 'succeeded'",
        ("procrastinate",),
    ),
    System(
        "celery sqla prefork -c 2",
        "celery",
        [[*CELERY, "-c", "2", "-P", "prefork"]],
        "SELECT count(*) FROM celery_taskmeta WHERE status = 'SUCCESS'",
        ("sqlalchemy",),
    ),
]


def _db_url(base: str, name: str) -> str:
    return urlsplit(base)._replace(path=f"/{name}").geturl()


class Database:
    """A database of the run's own, with the run's ``synchronous_commit``."""

    def __init__(self, base: str, sync: str) -> None:
        self.base = base
        self.name = f"celeriac_bench_{uuid.uuid4().hex[:10]}"
        with psycopg.connect(base, autocommit=True) as conn:
            conn.execute(f"CREATE DATABASE {self.name}")
            conn.execute(f"ALTER DATABASE {self.name} SET synchronous_commit = {sync}")
        self.url = _db_url(base, self.name)

    def count(self, sql: str) -> int:
        try:
            with psycopg.connect(self.url, autocommit=True) as conn:
                return int(conn.execute(sql).fetchone()[0])  # type: ignore[index]
        except psycopg.errors.UndefinedTable:
            return 0

    def drop(self) -> None:
        with psycopg.connect(self.base, autocommit=True) as conn:
            conn.execute(f"DROP DATABASE IF EXISTS {self.name} WITH (FORCE)")


def _env(url: str) -> dict[str, str]:
    return {**os.environ, "BENCH_PG_URL": url, "PYTHONPATH": str(APPS)}


def _client(system: System, url: str, action: str, n: int) -> object:
    out = subprocess.run(
        [PY, str(APPS / "client.py"), system.key, action, str(n)],
        env=_env(url),
        cwd=APPS,
        capture_output=True,
        text=True,
        timeout=600,
    )
    if out.returncode:
        raise RuntimeError(f"{system.name} {action}: {out.stderr[-2000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def run_once(system: System, base: str, sync: str, n: int, calls: int) -> dict[str, float]:
    db = Database(base, sync)
    workers: list[subprocess.Popen[bytes]] = []
    try:
        if system.key == "procrastinate":
            subprocess.run(
                [*PROCRASTINATE[:-1], "schema", "--apply"],
                env=_env(db.url),
                cwd=APPS,
                check=True,
                capture_output=True,
                timeout=120,
            )
        enqueue_s = float(_client(system, db.url, "enqueue", n))  # type: ignore[arg-type]
        total = n + 1  # and the warm-up send
        start = time.perf_counter()
        for argv in system.workers:
            workers.append(
                subprocess.Popen(
                    argv,
                    env=_env(db.url),
                    cwd=APPS,
                    start_new_session=True,
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                )
            )
        deadline = time.monotonic() + 600
        while (done := db.count(system.done_sql)) < total:
            if time.monotonic() > deadline:
                raise RuntimeError(f"{system.name}: {done}/{total} done after 600 s")
            time.sleep(0.02)
        drain_s = time.perf_counter() - start
        trips = _client(system, db.url, "roundtrip", calls)
        assert isinstance(trips, list)
        return {
            "enqueue_per_s": n / enqueue_s,
            "drain_per_s": total / drain_s,
            "rt_p50_ms": percentile(trips, 0.5) * 1000,
            "rt_p99_ms": percentile(trips, 0.99) * 1000,
        }
    finally:
        for w in workers:
            stop(w)
        db.drop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, default=2000)
    parser.add_argument("--calls", type=int, default=200)
    parser.add_argument("--repeat", type=int, default=1)
    parser.add_argument("--pg", default="postgresql://postgres@127.0.0.1:5432/postgres")
    parser.add_argument("--synchronous-commit", default="on", choices=["on", "off", "local"])
    parser.add_argument("--systems", nargs="*", help="keys: celeriac procrastinate celery")
    parser.add_argument("--json", help="write the medians here")
    args = parser.parse_args()
    systems = [
        s
        for s in SYSTEMS
        if (not args.systems or s.key in args.systems)
        and all(importlib.util.find_spec(m) for m in s.needs)
    ]
    runs: dict[str, list[dict[str, float]]] = {s.name: [] for s in systems}
    for _ in range(args.repeat):
        for s in systems:  # interleaved: the machine's load falls on every system alike
            runs[s.name].append(run_once(s, args.pg, args.synchronous_commit, args.n, args.calls))
            print(s.name, runs[s.name][-1], flush=True)
    medians = {
        name: {k: sorted(r[k] for r in rs)[len(rs) // 2] for k in rs[0]}
        for name, rs in runs.items()
    }
    print(f"\nN={args.n}, calls={args.calls}, synchronous_commit={args.synchronous_commit}")
    print(f"{'system':28} {'enqueue/s':>10} {'drain/s':>10} {'p50 ms':>8} {'p99 ms':>8}")
    for name, m in medians.items():
        print(
            f"{name:28} {m['enqueue_per_s']:10.0f} {m['drain_per_s']:10.0f}"
            f" {m['rt_p50_ms']:8.1f} {m['rt_p99_ms']:8.1f}"
        )
    peers = [m for name, m in medians.items() if not name.startswith("celeriac")]
    for name, ours in medians.items():
        if not name.startswith("celeriac") or not peers:
            continue
        for key in ("enqueue_per_s", "drain_per_s"):
            best = max(p[key] for p in peers)
            print(f"{name}: {key} / faster peer's = {ours[key] / best:.2f}x (target >= 2x)")
        best_p50 = min(p["rt_p50_ms"] for p in peers)
        print(f"{name}: rt_p50 / faster peer's = {ours['rt_p50_ms'] / best_p50:.2f}x (lower wins)")
    if args.json:
        Path(args.json).write_text(json.dumps(medians, indent=2))


if __name__ == "__main__":
    main()
