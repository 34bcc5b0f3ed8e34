"""Celeriac vs Celery (and other Redis task queues, when installed) on one Redis, in one run.

    .venv/bin/python bench/redis_vs_peers.py [--n 20000] [--repeat 3] [--systems ...]

Every system runs the same task (takes an int, returns it, INCRs a counter so completion is
counted by the tasks themselves, as in shared/ANCHORS.md) with broker and results on the Redis at
``--redis`` (DB 14, a fresh key prefix per run, deleted afterwards). Per system and run:

1. **enqueue/s**: N ``delay()`` calls from one fresh client process, no worker running;
2. **drain/s**: workers started after the N tasks are queued; N / (wall time from start to the
   N-th completion), start-up included; and after the first completion;
3. **round trip p50/p99**: 300 sequential ``delay(i).get()`` from a fresh client;
4. **worker RSS**: the worker process tree after the drain;
5. **Redis CPU per task** during the drain (``INFO cpu``) and **Redis calls per task**
   (``INFO commandstats``: commands sent by clients plus those run inside scripts): how close the
   system runs Redis to its own limit. ``1e6 / CPU us per task`` is the drain rate at which this
   system's command mix would keep one Redis core busy (**Redis-side ceiling**).
   ``--redis-benchmark`` also runs ``redis-benchmark`` on the same server for the single
   commands involved (GET/SET/INCR/LPUSH/RPOP/MGET, a trivial EVAL), for scale.

Then the ratios against Celery and against the fastest other peer, next to issue 4's targets
(drain >= 3x Celery and >= 1.5x the fastest peer, enqueue >= 2x Celery, p50 <= 0.5x Celery).

Peers other than Celery are measured only if their package is installed (see SYSTEMS):
``pip install 'dramatiq[redis]' rq`` (Huey is a dev dependency already). arq and taskiq-redis
are left out: both pin redis-py < 6, which kombu 5.7 (Celery's transport) refuses, so they
cannot share one environment with Celery; shared/ANCHORS.md has their numbers from a separate
run on this kind of machine.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
import os
import shutil
import signal
import statistics
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

import redis
from bytecode import compile_sources
from sqlite_vs_huey import percentile, stop, tree_usage

HERE = Path(__file__).resolve().parent
APPS = HERE / "redis_apps"
PY = sys.executable
CELERIAC = [PY, "-m", "celeriac", "-A", "celeriac_app:app", "worker", "-l", "warning"]
CELERY = [PY, "-m", "celery", "-A", "celery_app", "worker", "-l", "warning"]


@dataclass(frozen=True)
class System:
    name: str
    app: str  # module in redis_apps/ with an ``echo`` task
    workers: list[list[str]]  # one command per worker process tree
    needs: str = ""  # package that must be importable
    notes: str = ""
    env: dict[str, str] = field(default_factory=dict)
    #: logs INFO lines per task by default (kept, as the system's default, but not shown)


SYSTEMS = [
    System("celeriac prefork -c 2", "celeriac", [[*CELERIAC, "-c", "2"]]),
    System(
        "celeriac prefork -c 2 -E",
        "celeriac",
        [[*CELERIAC, "-c", "2", "-E"]],
        notes="task events on: each child sends task.multi batches (PUBLISH) as it works",
    ),
    System(
        "celeriac 2 x solo",
        "celeriac",
        [[*CELERIAC, "-P", "solo", "-n", f"w{i}@bench"] for i in (1, 2)],
        notes="two worker processes, each running tasks in its own main thread",
    ),
    System(
        "celeriac prefork -c 2, send_many",
        "celeriac",
        [[*CELERIAC, "-c", "2"]],
        notes="the same worker; the client enqueues with app.send_many, 1,000 calls a batch",
        env={"BENCH_BATCH": "1000"},
    ),
    System("celery prefork -c 2", "celery", [[*CELERY, "-c", "2"]], needs="celery"),
    System(
        "huey -k process -w 2",
        "huey",
        [[PY, "-m", "huey.bin.huey_consumer", "huey_app.huey", "-k", "process", "-w", "2", "-q"]],
        needs="huey",
        notes="RedisHuey (blocking BRPOP), results in the same Redis, -q; its blocking get() "
        "polls the result from 50 ms up (x1.15 per miss)",
    ),
    System(
        "dramatiq -p 2 (8 threads)",
        "dramatiq",
        [[PY, "-m", "dramatiq", "dramatiq_app", "-p", "2"]],
        needs="dramatiq",
    ),
    System(
        "rq 2 x SimpleWorker",
        "rq",
        [
            [
                PY,
                "-m",
                "rq.cli",
                "worker",
                "-w",
                "rq.worker.SimpleWorker",
                "-q",
                "-u",
                "{url}",
                "{prefix}rq",
            ]
            for _ in (1, 2)
        ],
        needs="rq",
    ),
]

METRICS = [
    ("enqueue_per_s", "enqueue tasks/s", True),
    ("drain_per_s", "drain tasks/s (incl. start-up)", True),
    ("steady_drain_per_s", "drain tasks/s after 1st result", True),
    ("rt_p50_ms", "round trip p50 ms", False),
    ("rt_p99_ms", "round trip p99 ms", False),
    ("rss_mb", "worker tree RSS MB after drain", False),
    ("worker_cpu_us_per_task", "worker tree CPU us per task", False),
    ("redis_cpu_us_per_task", "Redis server CPU us per task", False),
    ("redis_calls_per_task", "Redis calls per task", False),
    ("redis_ceiling_per_s", "Redis-side ceiling tasks/s", True),
]


def run_client(system: System, action: str, n: int, env: dict[str, str]) -> dict:
    out = subprocess.run(
        [PY, str(APPS / "client.py"), system.app, action, str(n)],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    if out.returncode != 0:
        raise RuntimeError(f"{system.name} {action} client failed:\n{out.stderr[-2000:]}")
    return json.loads(out.stdout)


def run_once(system: System, n: int, calls: int, url: str) -> dict[str, float]:
    prefix = f"bench-{uuid.uuid4().hex[:8]}:"
    count_key = f"{prefix}done"
    env = {
        **os.environ,
        **system.env,
        # The caller's PYTHONPATH after the apps: PYTHONPATH=<checkout>/src measures another
        # checkout of Celeriac (an earlier commit) with this script.
        "PYTHONPATH": os.pathsep.join(filter(None, [str(APPS), os.environ.get("PYTHONPATH")])),
        "BENCH_REDIS_URL": url,
        "BENCH_COUNT_URL": url,
        "BENCH_PREFIX": prefix,
        "BENCH_COUNT_KEY": count_key,
    }
    client = redis.Redis.from_url(url)
    workers: list[subprocess.Popen[bytes]] = []
    try:
        enqueue_s = run_client(system, "enqueue", n, env)["seconds"]
        cpu0, calls0 = _redis_cpu(client), _redis_calls(client)
        t0 = time.perf_counter()
        for template in system.workers:
            cmd = [arg.format(url=url, prefix=prefix) for arg in template]
            workers.append(
                subprocess.Popen(
                    cmd,
                    env=env,
                    cwd=APPS,
                    start_new_session=True,
                    stdout=subprocess.DEVNULL,
                )
            )
        first = None
        while True:
            done = int(client.get(count_key) or 0)
            now = time.perf_counter()
            if done and first is None:
                first = now - t0
            if done >= n:
                last = now - t0
                redis_cpu = _redis_cpu(client) - cpu0
                redis_calls = _redis_calls(client) - calls0
                break
            if now - t0 > max(120.0, n / 50):
                raise RuntimeError(f"{system.name}: only {done}/{n} done")
            time.sleep(0.02)
        usage = [tree_usage(w.pid) for w in workers]
        latencies = run_client(system, "roundtrip", calls, env)["latencies_ms"]
    finally:
        for w in workers:
            stop(w)
        keys = list(client.scan_iter(match=f"{prefix}*", count=5000))
        if system.app == "rq":  # RQ keeps jobs under rq:*; DB 14 is the bench's own
            keys += list(client.scan_iter(match="rq:*", count=5000))
        if system.app == "huey":  # huey.<kind>.<name>, the name carrying the prefix
            keys += list(client.scan_iter(match=f"huey.*{prefix}*", count=5000))
        for i in range(0, len(keys), 1000):
            client.delete(*keys[i : i + 1000])
        client.close()
    assert first is not None
    return {
        "enqueue_per_s": n / enqueue_s,
        "drain_per_s": n / last,
        "steady_drain_per_s": (n - 1) / (last - first) if last > first else math.nan,
        "rt_p50_ms": percentile(latencies, 0.50),
        "rt_p99_ms": percentile(latencies, 0.99),
        "rss_mb": sum(u["rss_mb"] for u in usage),
        # start-up included; the task's own INCR (same for every system) is part of it
        "worker_cpu_us_per_task": 1e6 * sum(u["cpu_s"] for u in usage) / n,
        # Server-wide, so other clients of the same Redis count too: a dedicated one is best.
        "redis_cpu_us_per_task": 1e6 * redis_cpu / n,
        "redis_calls_per_task": redis_calls / n,
        "redis_ceiling_per_s": n / redis_cpu if redis_cpu > 0 else math.nan,
    }


def _redis_cpu(client: redis.Redis) -> float:
    info = client.info("cpu")
    return float(info["used_cpu_user"]) + float(info["used_cpu_sys"])


def _redis_calls(client: redis.Redis) -> int:
    """Commands Redis ran (those inside scripts included), minus the bench's own polling."""
    stats = client.info("commandstats")
    return sum(int(v["calls"]) for k, v in stats.items() if k not in ("cmdstat_info",))


def redis_benchmark(url: str) -> None:
    """``redis-benchmark`` on the same server, for the single commands a task is made of."""
    parts = urlsplit(url)
    base = ["redis-benchmark", "-h", parts.hostname or "127.0.0.1", "-p", str(parts.port or 6379)]
    base += ["-q", "-n", "100000", "--dbnum", "15"]  # an unused DB; it writes key:__rand_int__
    if not shutil.which("redis-benchmark"):
        print("redis-benchmark not found")
        return
    print("\nredis-benchmark (50 clients, no pipelining), same server:")
    for cmd in (["-t", "get,set,incr,lpush,rpop,mget"], ["EVAL", "return 1", "0"]):
        out = subprocess.run(base + cmd, capture_output=True, text=True, timeout=300).stdout
        for line in out.replace("\r", "\n").splitlines():
            if "requests per second" in line:
                print("  " + line.strip())
    # Without -r, redis-benchmark uses these fixed names.
    redis.Redis.from_url(url, db=15).delete("key:__rand_int__", "counter:__rand_int__", "mylist")


def fmt(value: float) -> str:
    return f"{value:,.0f}" if value >= 100 else f"{value:.3g}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=20000, help="tasks to enqueue and drain")
    parser.add_argument("--repeat", type=int, default=3, help="runs per system (median)")
    parser.add_argument("--calls", type=int, default=300, help="sequential round trips")
    parser.add_argument("--redis", default="redis://127.0.0.1:6379/14")
    parser.add_argument("--systems", nargs="*", help="names to run (default: all installed)")
    parser.add_argument("--json", type=Path, help="also write all runs and medians here")
    parser.add_argument(
        "--redis-benchmark", action="store_true", help="also run redis-benchmark on the server"
    )
    args = parser.parse_args()
    compile_sources()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))

    systems = [
        s
        for s in SYSTEMS
        if (not s.needs or importlib.util.find_spec(s.needs))
        and (not args.systems or s.name in args.systems)
    ]
    runs: dict[str, list[dict[str, float]]] = {s.name: [] for s in systems}
    for i in range(args.repeat):
        for system in systems:  # interleaved, so drift on the machine hits all alike
            result = run_once(system, args.n, args.calls, args.redis)
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
    names = list(medians)
    print(f"\nN={args.n}, {args.calls} round trips, median of {args.repeat}, {os.cpu_count()} CPUs")
    row = "{:<32}" + " {:>22}" * len(names)
    print(row.format("metric", *names))
    for key, label, _ in METRICS:
        print(row.format(label, *(fmt(medians[n][key]) for n in names)))
    print_ratios(medians)
    if args.redis_benchmark:
        redis_benchmark(args.redis)
    if args.json:
        args.json.write_text(json.dumps({"runs": runs, "median": medians}, indent=2))


def print_ratios(medians: dict[str, dict[str, float]]) -> None:
    """Each Celeriac row against Celery and the fastest other peer, with issue 4's targets, and
    its enqueue against Huey's with issue 19's (>= 1.2x one call at a time, >= 50,000/s with
    ``send_many``)."""
    celery = next((m for n, m in medians.items() if n.startswith("celery")), None)
    huey = next((m for n, m in medians.items() if n.startswith("huey")), None)
    peers = {n: m for n, m in medians.items() if not n.startswith(("celeriac", "celery"))}
    fastest = max(peers, key=lambda n: peers[n]["drain_per_s"], default=None)
    for name, m in medians.items():
        if not name.startswith("celeriac"):
            continue
        print(f"\n{name}:")
        if celery is not None:
            for key, label, target in (
                ("drain_per_s", "drain vs Celery", ">= 3x"),
                ("enqueue_per_s", "enqueue vs Celery", ">= 2x"),
                ("rt_p50_ms", "round trip p50 vs Celery", "<= 0.5x"),
            ):
                print(f"  {label:<32} {m[key] / celery[key]:6.2f}x   (target {target})")
        if huey is not None and "send_many" not in name:
            ratio = m["enqueue_per_s"] / huey["enqueue_per_s"]
            print(f"  {'enqueue vs Huey':<32} {ratio:6.2f}x   (target >= 1.2x)")
        if "send_many" in name:
            rate = fmt(m["enqueue_per_s"])
            print(f"  {'enqueue with send_many':<32} {rate:>7}/s (target >= 50,000)")
        if fastest is not None:
            ratio = m["drain_per_s"] / peers[fastest]["drain_per_s"]
            print(f"  {'drain vs ' + fastest:<32} {ratio:6.2f}x   (target >= 1.5x)")
        ceiling = m["redis_ceiling_per_s"]
        if ceiling == ceiling:  # not NaN
            share = m["drain_per_s"] / ceiling
            print(f"  {'drain / Redis-side ceiling':<32} {share:6.0%}")


if __name__ == "__main__":
    main()
