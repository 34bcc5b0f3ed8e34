"""Celeriac vs Huey, both on one embedded SQLite file, measured in one run on this machine.

    .venv/bin/python bench/sqlite_vs_huey.py [--n 20000] [--repeat 3] [--json out.json]

See bench/README.md for what each number means.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import signal
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import huey
from bytecode import compile_sources

import celeriac

HERE = Path(__file__).resolve().parent
PY = sys.executable
POLL = 0.05  # how often the bench counts completed tasks


@dataclass(frozen=True)
class System:
    name: str
    worker: list[str]
    count_sql: str  # completed tasks, counted in the worker's own result store

    def env(self, db: Path) -> dict[str, str]:
        # Both task modules live in bench/; each system only sees its own file.
        return {
            **os.environ,
            # a PYTHONPATH given to the bench comes after: another checkout's src/ to compare
            "PYTHONPATH": os.pathsep.join(filter(None, [str(HERE), os.environ.get("PYTHONPATH")])),
            "CELERIAC_BROKER_URL": f"sqlite:///{db}",
            "HUEY_BENCH_DB": str(db),
        }


SYSTEMS = [
    System(
        "celeriac",
        [PY, "-m", "celeriac", "-A", "celeriac_tasks:app", "worker", "-c", "2", "-P", "prefork"],
        "SELECT count(*) FROM celeriac_results WHERE status = 'SUCCESS'",
    ),
    System(
        "huey",
        [PY, "-m", "huey.bin.huey_consumer", "huey_tasks.huey", "-k", "process", "-w", "2"],
        "SELECT count(*) FROM kv WHERE queue = 'bench'",
    ),
]

#: ``--events``: the same Celeriac worker with task events on (-E), instead of Huey
EVENTS = System(
    "celeriac -E",
    [*SYSTEMS[0].worker, "-E"],
    SYSTEMS[0].count_sql,
)

# (key, label, is higher better? None: neither, just context)
METRICS = [
    ("enqueue_per_s", "enqueue tasks/s", True),
    ("drain_per_s", "drain tasks/s (incl. start-up)", True),
    ("startup_s", "worker start-up s (to 1st result)", False),
    ("steady_drain_per_s", "drain tasks/s after 1st result", True),
    ("worker_cpu_pct", "worker tree CPU % during drain", None),
    ("worker_cpu_ms_per_task", "worker tree CPU ms per task", False),
    ("rt_p50_ms", "round trip p50 ms", False),
    ("rt_p99_ms", "round trip p99 ms", False),
    ("rss_mb", "worker tree RSS MB after drain", False),
    ("anon_rss_mb", "  of which anonymous (RssAnon) MB", False),
]


def run_client(system: System, action: str, n: int, env: dict[str, str]) -> dict:
    out = subprocess.run(
        [PY, str(HERE / "client.py"), system.name.split()[0], action, str(n)],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    if out.returncode != 0:
        raise RuntimeError(f"{system.name} {action} client failed:\n{out.stderr[-2000:]}")
    return json.loads(out.stdout)


def count_done(db: Path, sql: str) -> int:
    # A fresh autocommit read each time: WAL readers never block the worker's writes.
    conn = sqlite3.connect(db, timeout=5, isolation_level=None)
    try:
        return conn.execute(sql).fetchone()[0]
    except sqlite3.OperationalError:  # table not created yet
        return 0
    finally:
        conn.close()


def wait_drained(
    system: System, db: Path, n: int, worker: subprocess.Popen, t0: float
) -> tuple[float, float]:
    """Seconds from worker start to its first and to its last completed task."""
    first = None
    deadline = t0 + max(120.0, n / 50)
    while True:
        done = count_done(db, system.count_sql)
        now = time.perf_counter()
        if done and first is None:
            first = now - t0
        if done >= n:
            return first, now - t0
        if worker.poll() is not None:
            raise RuntimeError(f"{system.name} worker exited with {worker.returncode}")
        if now > deadline:
            raise RuntimeError(f"{system.name}: only {done}/{n} done after {now - t0:.0f}s")
        time.sleep(POLL)


def tree_usage(root: int) -> dict[str, float]:
    """CPU seconds so far and memory of a process and all its descendants, from /proc.

    rss_mb is VmRSS (pages shared after fork count once per process). anon_rss_mb is RssAnon
    only: with no swap it cannot shrink, whereas the file-backed part of RSS (interpreter, shared
    libraries) is dropped by proactive reclaim (e.g. DAMON) on some VMs, which makes VmRSS noisy.
    """
    parents, ticks = {}, {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rpartition(")")[2].split()
            except OSError:
                continue
            parents[int(entry.name)] = int(fields[1])
            ticks[int(entry.name)] = int(fields[11]) + int(fields[12])  # utime + stime
    tree, frontier = {root}, [root]
    while frontier:
        pid = frontier.pop()
        kids = [p for p, pp in parents.items() if pp == pid]
        tree.update(kids)
        frontier.extend(kids)
    kb = {"VmRSS:": 0, "RssAnon:": 0}
    for pid in tree:
        try:
            status = Path(f"/proc/{pid}/status").read_text()
        except OSError:
            continue
        for fields in map(str.split, status.splitlines()):
            if fields and fields[0] in kb:
                kb[fields[0]] += int(fields[1])
    return {
        "cpu_s": sum(ticks.get(pid, 0) for pid in tree) / os.sysconf("SC_CLK_TCK"),
        "rss_mb": kb["VmRSS:"] / 1024,
        "anon_rss_mb": kb["RssAnon:"] / 1024,
        "worker_procs": len(tree),
    }


def stop(worker: subprocess.Popen) -> None:
    """TERM the worker's process group, then KILL whatever of it is left."""
    for sig, wait in ((signal.SIGTERM, 10), (signal.SIGKILL, 5)):
        try:
            os.killpg(worker.pid, sig)
        except ProcessLookupError:
            return
        with contextlib.suppress(subprocess.TimeoutExpired):
            worker.wait(wait)


def percentile(values: list[float], q: float) -> float:
    return sorted(values)[math.ceil(q * len(values)) - 1]  # nearest rank


def run_once(system: System, n: int, calls: int) -> dict[str, float]:
    with tempfile.TemporaryDirectory(prefix=f"bench-{system.name}-") as tmp:
        db = Path(tmp) / "bench.sqlite3"
        env = system.env(db)
        enqueue_s = run_client(system, "enqueue", n, env)["seconds"]
        log_path = Path(tmp) / "worker.log"
        with open(log_path, "w") as log:
            t0 = time.perf_counter()
            # Own session: the worker and its children form one group we can kill as a whole.
            worker = subprocess.Popen(
                system.worker,
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                cwd=tmp,
            )
            try:
                first, last = wait_drained(system, db, n, worker, t0)
                usage = tree_usage(worker.pid)
                latencies = run_client(system, "roundtrip", calls, env)["latencies_ms"]
            except BaseException:
                print(f"--- {system.name} worker log tail ---\n{log_path.read_text()[-2000:]}")
                raise
            finally:
                stop(worker)
    return {
        "enqueue_per_s": n / enqueue_s,
        "drain_per_s": n / last,
        "startup_s": first,
        "steady_drain_per_s": (n - 1) / (last - first) if last > first else math.nan,
        "rt_p50_ms": percentile(latencies, 0.50),
        "rt_p99_ms": percentile(latencies, 0.99),
        # Whole worker tree, start-up included; 100% = one core busy.
        "worker_cpu_pct": 100 * usage["cpu_s"] / last,
        "worker_cpu_ms_per_task": 1000 * usage.pop("cpu_s") / n,
        **usage,
    }


def fmt(value: float) -> str:
    return f"{value:,.0f}" if value >= 100 else f"{value:.3g}"


def print_table(medians: dict[str, dict[str, float]], args: argparse.Namespace) -> None:
    print(
        f"\nN={args.n}, {args.calls} round trips, median of {args.repeat} run(s), "
        f"{os.cpu_count()} CPUs, SQLite {sqlite3.sqlite_version}, "
        f"celeriac {celeriac.__version__}, huey {huey.__version__}"
    )
    other = "celeriac -E" if args.events else "huey"
    row = "{:<36} {:>10} {:>12} {:>18}"
    print(row.format("metric", "celeriac", other, f"celeriac/{other}"))
    for key, label, higher in METRICS:
        c, h = medians["celeriac"][key], medians[other][key]
        ratio = c / h if h else math.nan
        better = {True: "higher", False: "lower", None: "info"}[higher]
        print(row.format(label, fmt(c), fmt(h), f"{ratio:.2f} ({better})"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=20000, help="tasks to enqueue and drain")
    parser.add_argument("--repeat", type=int, default=3, help="runs per system (median)")
    parser.add_argument("--calls", type=int, default=500, help="sequential round trips")
    parser.add_argument("--json", type=Path, help="also write all runs and medians here")
    parser.add_argument(
        "--events",
        action="store_true",
        help="compare the Celeriac worker with and without -E (task events) instead of Huey",
    )
    args = parser.parse_args()
    compile_sources()
    systems = [SYSTEMS[0], EVENTS] if args.events else SYSTEMS
    # A plain `kill` of the bench should still reach the finally blocks that stop the workers.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))

    runs: dict[str, list[dict[str, float]]] = {s.name: [] for s in systems}
    for i in range(args.repeat):
        for system in systems:  # interleaved, so drift on the machine hits both alike
            result = run_once(system, args.n, args.calls)
            runs[system.name].append(result)
            print(
                f"run {i + 1} {system.name}: "
                + ", ".join(f"{k}={fmt(v)}" for k, v in result.items()),
                flush=True,
            )
    medians = {
        name: {key: statistics.median(r[key] for r in rs) for key, _, _ in METRICS}
        for name, rs in runs.items()
    }
    print_table(medians, args)
    if args.json:
        args.json.write_text(
            json.dumps(
                {"args": vars(args) | {"json": str(args.json)}, "runs": runs, "median": medians},
                indent=2,
            )
        )


if __name__ == "__main__":
    main()
