"""Celeriac's own pools side by side: prefork, threads, solo and asyncio, on SQLite (and Redis).

    .venv/bin/python bench/pools.py [--n 10000] [--repeat 3] [--calls 500] [--json out.json]

For every pool configuration (see CONFIGS) and broker, per run:

1. N no-op tasks are enqueued by one fresh client process, with no worker running;
2. the worker (``python -m celeriac -A pools:app worker -P <pool> -c <n>``) is started and the
   bench counts results in the result store every 50 ms: **start-up s** is Popen -> first result,
   **drain/s** is N / (Popen -> N-th result), **steady/s** is (N - 1) / (first -> N-th result);
3. the worker tree's RSS (and RssAnon) from /proc right after the drain, and its CPU time;
4. with the worker idle, a fresh client makes ``--calls`` sequential ``delay(i).get()`` calls
   (after one untimed warm-up): **p50 / p99 ms**.

Every number is the median over ``--repeat`` runs; configurations are interleaved within a
repeat so drift on the machine hits all alike. SQLite: a fresh database file per run. Redis (only
if a server answers at ``--redis``): DB 14, a fresh ``global_keyprefix`` per run, and only keys
under that prefix are deleted afterwards. This file is also the task module the workers load
(``-A pools:app``) and, with ``client ...`` as arguments, the client process.
"""

from __future__ import annotations

import argparse
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
import uuid
from dataclasses import dataclass
from pathlib import Path

from celeriac import Celeriac

# -- the task module (kept light: the worker imports this file) ---------------------------------
# Broker from CELERIAC_BROKER_URL, results from CELERIAC_RESULT_BACKEND (or the SQLite file).
app = Celeriac("bench_pools")


@app.task(name="bench.echo")
def echo(i: int) -> int:
    return i


@app.task(name="bench.aecho")
async def aecho(i: int) -> int:
    return i


TASKS = {"echo": echo, "aecho": aecho}

# -- the bench ---------------------------------------------------------------------------------
HERE = Path(__file__).resolve().parent
PY = sys.executable
POLL = 0.05


@dataclass(frozen=True)
class Config:
    name: str
    args: list[str]  # worker options
    task: str  # key of TASKS


CONFIGS = [
    Config("prefork -c 2", ["-P", "prefork", "-c", "2"], "echo"),
    Config("threads -c 2", ["-P", "threads", "-c", "2"], "echo"),
    # solo ignores -c except for the prefetch (c x 4), kept equal to the others'.
    Config("solo (-c 2 prefetch)", ["-P", "solo", "-c", "2"], "echo"),
    Config("asyncio -c 2, async def", ["-P", "asyncio", "-c", "2"], "aecho"),
    Config("asyncio -c 2, sync def", ["-P", "asyncio", "-c", "2"], "echo"),
    Config("asyncio -c 100, async def", ["-P", "asyncio", "-c", "100"], "aecho"),
]

# (key, column header, format)
COLUMNS = [
    ("startup_s", "start-up s", "{:.2f}"),
    ("drain_per_s", "drain/s", "{:,.0f}"),
    ("steady_drain_per_s", "steady/s", "{:,.0f}"),
    ("worker_cpu_ms_per_task", "CPU ms/task", "{:.3f}"),
    ("rt_p50_ms", "p50 ms", "{:.2f}"),
    ("rt_p99_ms", "p99 ms", "{:.2f}"),
    ("rss_mb", "RSS MB", "{:.1f}"),
    ("anon_rss_mb", "anon MB", "{:.1f}"),
    ("worker_procs", "procs", "{:.0f}"),
]


class Store:
    """Where one run's broker and results live, and how the bench counts finished tasks."""

    name = ""

    def env(self) -> dict[str, str]:
        raise NotImplementedError

    def count(self, ids: list[str]) -> int:
        raise NotImplementedError

    def close(self) -> None:
        pass


class SqliteStore(Store):
    name = "sqlite"

    def __init__(self, tmp: Path) -> None:
        self.db = tmp / "bench.sqlite3"

    def env(self) -> dict[str, str]:
        return {"CELERIAC_BROKER_URL": f"sqlite:///{self.db}"}

    def count(self, ids: list[str]) -> int:
        # A fresh autocommit read each time: WAL readers never block the worker's writes.
        conn = sqlite3.connect(self.db, timeout=5, isolation_level=None)
        try:
            sql = "SELECT count(*) FROM celeriac_results WHERE status = 'SUCCESS'"
            return conn.execute(sql).fetchone()[0]
        except sqlite3.OperationalError:  # table not created yet
            return 0
        finally:
            conn.close()


class RedisStore(Store):
    name = "redis"

    def __init__(self, url: str) -> None:
        import redis

        self.prefix = f"bench-pools-{uuid.uuid4().hex[:8]}:"
        self.url = f"{url}?global_keyprefix={self.prefix}"
        self.client = redis.Redis.from_url(url)
        self._done_chunks: set[int] = set()

    def env(self) -> dict[str, str]:
        return {"CELERIAC_BROKER_URL": self.url, "CELERIAC_RESULT_BACKEND": self.url}

    def count(self, ids: list[str]) -> int:
        # EXISTS over the run's ids (1,000 a call), skipping chunks already complete.
        step, done = 1000, 0
        for start in range(0, len(ids), step):
            chunk = ids[start : start + step]
            if start in self._done_chunks:
                done += len(chunk)
                continue
            got = self.client.exists(*(f"{self.prefix}celery-task-meta-{i}" for i in chunk))
            if got == len(chunk):
                self._done_chunks.add(start)
            done += got
        return done

    def close(self) -> None:
        # Only the keys this run created (its own prefix), on the bench's own DB.
        keys = list(self.client.scan_iter(match=f"{self.prefix}*", count=5000))
        for i in range(0, len(keys), 1000):
            self.client.delete(*keys[i : i + 1000])
        self.client.close()


def pythonpath() -> str:
    """bench/ for the task module, then the caller's PYTHONPATH: ``PYTHONPATH=/some/src`` runs
    the benchmark (bench process, clients and workers) against another checkout of celeriac."""
    return os.pathsep.join(p for p in (str(HERE), os.environ.get("PYTHONPATH")) if p)


def run_client(action: str, task: str, n: int, env: dict[str, str]) -> dict:
    out = subprocess.run(
        [PY, str(HERE / "pools.py"), "client", action, task, str(n)],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    if out.returncode != 0:
        raise RuntimeError(f"client {action} failed:\n{out.stderr[-2000:]}")
    return json.loads(out.stdout)


def client_main(action: str, task_key: str, n: int) -> None:
    """The client process: enqueue N tasks (prints their ids) or time N round trips."""
    task = TASKS[task_key]
    if action == "enqueue":
        start = time.perf_counter()
        ids = [task.delay(i).id for i in range(n)]
        print(json.dumps({"seconds": time.perf_counter() - start, "ids": ids}))
        return
    task.delay(-1).get(timeout=30)  # connections open, worker awake
    latencies = []
    for i in range(n):
        start = time.perf_counter()
        if task.delay(i).get(timeout=10) != i:
            raise SystemExit(f"wrong result for {i}")
        latencies.append((time.perf_counter() - start) * 1000)
    print(json.dumps({"latencies_ms": latencies}))


def run_once(config: Config, store: Store, n: int, calls: int, tmp: Path) -> dict[str, float]:
    from sqlite_vs_huey import percentile, stop, tree_usage

    env = {**os.environ, "PYTHONPATH": pythonpath(), **store.env()}
    enqueued = run_client("enqueue", config.task, n, env)
    ids = enqueued["ids"]
    cmd = [PY, "-m", "celeriac", "-A", "pools:app", "worker", "-l", "warning", *config.args]
    log_path = tmp / "worker.log"
    with open(log_path, "w") as log:
        t0 = time.perf_counter()
        worker = subprocess.Popen(
            cmd, env=env, cwd=tmp, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
        try:
            first = last = None
            deadline = t0 + max(120.0, n / 50)
            while last is None:
                done = store.count(ids)
                now = time.perf_counter()
                if done and first is None:
                    first = now - t0
                if done >= n:
                    last = now - t0
                elif worker.poll() is not None:
                    raise RuntimeError(f"{config.name}: worker exited with {worker.returncode}")
                elif now > deadline:
                    raise RuntimeError(f"{config.name}: only {done}/{n} done after {now - t0:.0f}s")
                else:
                    time.sleep(POLL)
            usage = tree_usage(worker.pid)
            latencies = run_client("roundtrip", config.task, calls, env)["latencies_ms"]
        except BaseException:
            print(f"--- {config.name} worker log tail ---\n{log_path.read_text()[-2000:]}")
            raise
        finally:
            stop(worker)
    assert first is not None
    return {
        "enqueue_per_s": n / enqueued["seconds"],
        "startup_s": first,
        "drain_per_s": n / last,
        "steady_drain_per_s": (n - 1) / (last - first) if last > first else math.nan,
        "worker_cpu_ms_per_task": 1000 * usage.pop("cpu_s") / n,
        "rt_p50_ms": percentile(latencies, 0.50),
        "rt_p99_ms": percentile(latencies, 0.99),
        **usage,
    }


def redis_reachable(url: str) -> bool:
    try:
        import redis

        client = redis.Redis.from_url(url, socket_connect_timeout=1, socket_timeout=1)
        try:
            return bool(client.ping())
        finally:
            client.close()
    except Exception:
        return False


def one(config: Config, broker: str, args: argparse.Namespace) -> dict[str, float]:
    with tempfile.TemporaryDirectory(prefix="bench-pools-") as tmp:
        store: Store = SqliteStore(Path(tmp)) if broker == "sqlite" else RedisStore(args.redis)
        try:
            return run_once(config, store, args.n, args.calls, Path(tmp))
        finally:
            store.close()


def print_table(medians: dict[str, dict[str, float]], args: argparse.Namespace) -> None:
    import celeriac

    print(
        f"\nN={args.n} no-op tasks, {args.calls} round trips, median of {args.repeat} run(s), "
        f"{os.cpu_count()} CPUs, SQLite {sqlite3.sqlite_version}, celeriac {celeriac.__version__}"
        f" from {Path(celeriac.__file__).parent}"
    )
    width = max(len(k) for k in medians) + 2
    header = f"{'broker / pool':<{width}}" + "".join(f"{h:>12}" for _, h, _ in COLUMNS)
    print(header)
    for name, row in medians.items():
        cells = "".join(f"{fmt.format(row[key]):>12}" for key, _, fmt in COLUMNS)
        print(f"{name:<{width}}{cells}")


def main() -> None:
    if sys.argv[1:2] == ["client"]:
        client_main(sys.argv[2], sys.argv[3], int(sys.argv[4]))
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=10000, help="tasks to enqueue and drain")
    parser.add_argument("--repeat", type=int, default=3, help="runs per configuration (median)")
    parser.add_argument("--calls", type=int, default=500, help="sequential round trips")
    parser.add_argument("--redis", default="redis://127.0.0.1:6379/14", help="Redis DB to use")
    parser.add_argument("--brokers", nargs="*", default=["sqlite", "redis"], help="subset")
    parser.add_argument("--pools", nargs="*", help="configuration names to run (default: all)")
    parser.add_argument("--json", type=Path, help="also write all runs and medians here")
    args = parser.parse_args()
    # A plain `kill` of the bench must still reach the finally blocks that stop the workers.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))

    brokers = list(args.brokers)
    if "redis" in brokers and not redis_reachable(args.redis):
        print(f"no Redis at {args.redis}: SQLite only", flush=True)
        brokers.remove("redis")
    configs = [c for c in CONFIGS if not args.pools or c.name in args.pools]
    runs: dict[str, list[dict[str, float]]] = {
        f"{b} {c.name}": [] for b in brokers for c in configs
    }
    for i in range(args.repeat):
        for broker in brokers:
            for config in configs:
                result = one(config, broker, args)
                key = f"{broker} {config.name}"
                runs[key].append(result)
                print(
                    f"run {i + 1} {key}: " + ", ".join(f"{k}={v:.4g}" for k, v in result.items()),
                    flush=True,
                )
    medians = {
        name: {key: statistics.median(r[key] for r in rs) for key in rs[0]}
        for name, rs in runs.items()
    }
    print_table(medians, args)
    if args.json:
        args.json.write_text(
            json.dumps(
                {"args": {**vars(args), "json": str(args.json)}, "runs": runs, "median": medians},
                indent=2,
            )
        )


if __name__ == "__main__":
    main()
