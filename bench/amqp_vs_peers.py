"""Celeriac vs Celery and Dramatiq on one RabbitMQ, in one run.

    .venv/bin/python bench/amqp_vs_peers.py [--n 10000] [--repeat 3] [--systems ...]

Every system runs the same task as in redis_vs_peers.py (takes an int, returns it, INCRs a Redis
counter so completion is counted by the tasks themselves, as in shared/ANCHORS.md). Each run gets
a fresh RabbitMQ vhost (``rabbitmqctl add_vhost``, deleted afterwards) and a fresh key prefix in
``--redis`` (counter, Redis results; deleted afterwards). Per system and run:

1. **enqueue/s**: N ``delay()`` calls from one fresh client process, no worker running, with each
   system's default publishing: Celeriac waits for the publisher confirm (``... nc``: with
   ``confirm_publish=False``); Celery (``confirm_publish``) and Dramatiq (``confirm_delivery``)
   do not by default. For those and ``nc``,
   **enqueue/s with confirms** is measured first by another client with confirms on (that queue
   is then purged), so every system also has a rate with confirms;
2. **drain/s**: workers started after the N tasks are queued (2 worker processes each);
   N / (wall time from start to the N-th completion), start-up included; also after the first;
3. **round trip p50/p99**: ``--calls`` sequential ``delay(i).get()`` from a fresh client;
4. **worker RSS** of the worker process trees after the drain, and their CPU during it.

Results: Celery and Celeriac over ``rpc://`` (Celeriac also with Redis results); Dramatiq in its
Redis backend. Ratios are printed against ``celery -c 2 rpc``.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.metadata
import json
import math
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import redis
from bytecode import compile_sources
from redis_vs_peers import fmt
from sqlite_vs_huey import percentile, stop, tree_usage

HERE = Path(__file__).resolve().parent
APPS = HERE / "amqp_apps"
PY = sys.executable
CLIENT = HERE / "redis_apps" / "client.py"  # imports ``<system>_app`` and calls ``echo.delay``
CELERIAC = [PY, "-m", "celeriac", "-A", "amqp_celeriac_app:app", "worker", "-l", "warning"]
CELERY = [PY, "-m", "celery", "-A", "amqp_celery_app", "worker", "-l", "warning"]
DRAMATIQ = [PY, "-m", "dramatiq", "amqp_dramatiq_app", "-p", "2"]
BASELINE = "celery -c 2 rpc"


@dataclass(frozen=True)
class System:
    name: str
    app: str  # amqp_apps/<app>_app.py
    workers: list[list[str]]  # one command per worker process tree
    queue: str  # the queue it sends to (purged after the confirmed enqueue)
    confirm_option: str = ""  # its publisher-confirm switch, off by default ("": always on)
    env: dict[str, str] = field(default_factory=dict)


SYSTEMS = [
    System("celeriac -c 2 rpc", "amqp_celeriac", [[*CELERIAC, "-c", "2"]], "celery"),
    System(
        "celeriac 2xsolo rpc",
        "amqp_celeriac",
        [[*CELERIAC, "-P", "solo", "-n", f"w{i}@bench"] for i in (1, 2)],
        "celery",
    ),
    System(
        "celeriac -c 2 redis",
        "amqp_celeriac",
        [[*CELERIAC, "-c", "2"]],
        "celery",
        env={"BENCH_RESULTS": "redis"},
    ),
    System(
        "celeriac -c 2 redis nc",  # confirm_publish=False
        "amqp_celeriac",
        [[*CELERIAC, "-c", "2"]],
        "celery",
        "confirm_publish",
        env={"BENCH_RESULTS": "redis", "BENCH_CONFIRM_PUBLISH": "0"},
    ),
    System(BASELINE, "amqp_celery", [[*CELERY, "-c", "2"]], "celery", "confirm_publish"),
    System(
        "dramatiq -p2 -t1", "amqp_dramatiq", [[*DRAMATIQ, "-t", "1"]], "default", "confirm_delivery"
    ),
    System("dramatiq -p2 -t8", "amqp_dramatiq", [DRAMATIQ], "default", "confirm_delivery"),
]

# (key, label, is higher better? None: context only)
METRICS = [
    ("enqueue_per_s", "enqueue/s (system default)", True),
    ("enqueue_confirmed_per_s", "enqueue/s with confirms", True),
    ("drain_per_s", "drain/s (incl. start-up)", True),
    ("startup_s", "start-up s (to 1st result)", False),
    ("steady_drain_per_s", "drain/s after 1st result", True),
    ("worker_cpu_ms_per_task", "worker CPU ms per task", False),
    ("rt_p50_ms", "round trip p50 ms", False),
    ("rt_p99_ms", "round trip p99 ms", False),
    ("rss_mb", "worker RSS MB after drain", False),
    ("anon_rss_mb", "  of which anonymous MB", False),
]


def rabbitmqctl(*args: str) -> str:
    out = subprocess.run(
        ["rabbitmqctl", "-q", *args], check=True, capture_output=True, text=True, timeout=60
    )
    return out.stdout


@contextlib.contextmanager
def private_vhost(amqp: str):
    """A fresh vhost (deleted on the way out) and the AMQP URL for it."""
    name = f"bench-amqp-{uuid.uuid4().hex[:10]}"
    rabbitmqctl("add_vhost", name)
    try:
        rabbitmqctl("set_permissions", "-p", name, "guest", ".*", ".*", ".*")
        yield f"{amqp.rstrip('/')}/{name}", name
    finally:
        rabbitmqctl("delete_vhost", name)


def run_client(system: System, action: str, n: int, env: dict[str, str]) -> dict:
    out = subprocess.run(
        [PY, str(CLIENT), system.app, action, str(n)],
        env={**env, "BENCH_CLIENT": "1"},
        capture_output=True,
        text=True,
        timeout=900,
    )
    if out.returncode != 0:
        raise RuntimeError(f"{system.name} {action} client failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout)


def run_once(system: System, n: int, calls: int, amqp: str, url: str) -> dict[str, float]:
    prefix = f"bench-amqp-{uuid.uuid4().hex[:8]}:"
    count_key = f"{prefix}done"
    client = redis.Redis.from_url(url)
    workers: list[subprocess.Popen[bytes]] = []
    with (
        private_vhost(amqp) as (amqp_url, vhost),
        tempfile.TemporaryDirectory(prefix="bench-amqp-") as tmp,
    ):
        env = {
            **os.environ,
            **system.env,
            # The caller's PYTHONPATH after the apps: PYTHONPATH=<checkout>/src measures another
            # checkout, as in redis_vs_peers.py.
            "PYTHONPATH": os.pathsep.join(
                filter(None, [str(APPS), str(HERE / "redis_apps"), os.environ.get("PYTHONPATH")])
            ),
            "BENCH_AMQP_URL": amqp_url,
            "BENCH_REDIS_URL": url,
            "BENCH_COUNT_URL": url,
            "BENCH_PREFIX": prefix,
            "BENCH_COUNT_KEY": count_key,
        }
        logs = [Path(tmp) / f"worker{i}.log" for i in range(len(system.workers))]
        try:
            confirmed_s = math.nan
            if system.confirm_option:
                confirmed_s = run_client(system, "enqueue", n, {**env, "BENCH_CONFIRM": "1"})[
                    "seconds"
                ]
                rabbitmqctl("purge_queue", "-p", vhost, system.queue)
            enqueue_s = run_client(system, "enqueue", n, env)["seconds"]
            if not system.confirm_option:
                confirmed_s = enqueue_s
            t0 = time.perf_counter()
            for cmd, log in zip(system.workers, logs, strict=True):
                with open(log, "w") as out:
                    workers.append(
                        subprocess.Popen(
                            cmd,
                            env=env,
                            cwd=APPS,
                            start_new_session=True,
                            stdout=out,
                            stderr=subprocess.STDOUT,
                        )
                    )
            first = None
            deadline = t0 + max(120.0, n / 50)
            while True:
                done = int(client.get(count_key) or 0)
                now = time.perf_counter()
                if done and first is None:
                    first = now - t0
                if done >= n:
                    last = now - t0
                    break
                if now > deadline:
                    raise RuntimeError(f"{system.name}: only {done}/{n} done")
                for w in workers:
                    if w.poll() is not None:
                        raise RuntimeError(f"{system.name}: a worker exited with {w.returncode}")
                time.sleep(0.02)
            usage = [tree_usage(w.pid) for w in workers]
            latencies = run_client(system, "roundtrip", calls, env)["latencies_ms"]
        except BaseException:
            for log in logs:
                if log.exists():
                    print(f"--- {system.name} {log.name} tail ---\n{log.read_text()[-2000:]}")
            raise
        finally:
            for w in workers:
                stop(w)
            keys = list(client.scan_iter(match=f"{prefix}*", count=5000))
            for i in range(0, len(keys), 1000):
                client.delete(*keys[i : i + 1000])
            client.close()
    assert first is not None
    cpu_s = sum(u["cpu_s"] for u in usage)
    return {
        "enqueue_per_s": n / enqueue_s,
        "enqueue_confirmed_per_s": n / confirmed_s,
        "drain_per_s": n / last,
        "startup_s": first,
        "steady_drain_per_s": (n - 1) / (last - first) if last > first else math.nan,
        "worker_cpu_ms_per_task": 1000 * cpu_s / n,
        "rt_p50_ms": percentile(latencies, 0.50),
        "rt_p99_ms": percentile(latencies, 0.99),
        "rss_mb": sum(u["rss_mb"] for u in usage),
        "anon_rss_mb": sum(u["anon_rss_mb"] for u in usage),
        "worker_procs": sum(u["worker_procs"] for u in usage),
    }


def revision() -> str:
    """The commit the bench ran on, with ``+dirty`` when src/ has uncommitted changes."""
    try:
        head = subprocess.run(
            ["git", "-C", str(HERE), "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(HERE.parent), "status", "--porcelain", "src"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return head + ("+dirty src" if dirty else "")


def versions(started_on: str) -> str:
    """Package versions, and the commit (``a -> b`` when src/ changed during the run)."""
    now = revision()
    names = ("celery", "kombu", "amqp", "dramatiq", "pika", "celeriac")
    found = [
        f"commit {started_on}"
        + (f" -> {now} (CHANGED DURING THE RUN)" if now != started_on else "")
    ]
    for name in names:
        with contextlib.suppress(importlib.metadata.PackageNotFoundError):
            found.append(f"{name} {importlib.metadata.version(name)}")
    with contextlib.suppress(Exception):
        found.append("RabbitMQ " + rabbitmqctl("version").strip())
    return ", ".join(found)


def print_issue19(medians: dict[str, dict[str, float]]) -> None:
    """Issue 19's targets against Dramatiq with its CLI defaults (-p 2 -t 8), results in Redis."""
    dramatiq = medians.get("dramatiq -p2 -t8")
    if dramatiq is None:
        return
    print("\ntargets (issue 19) vs dramatiq -p2 -t8")
    checks = [
        ("celeriac -c 2 redis", "drain/s >= 2x", "drain_per_s", 2.0),
        ("celeriac -c 2 redis nc", "enqueue/s (confirm_publish=False) >= 1x", "enqueue_per_s", 1.0),
    ]
    for name, label, key, goal in checks:
        if name in medians:
            ratio = medians[name][key] / dramatiq[key]
            verdict = "met" if ratio >= goal else "MISSED"
            print(f"  {name:<24} {label:<42} {ratio:5.2f}x  {verdict}")


def print_tables(medians: dict[str, dict[str, float]]) -> None:
    print_issue19(medians)
    names = list(medians)
    row = "{:<30}" + " {:>20}" * len(names)
    print(row.format("metric", *names))
    for key, label, _ in METRICS:
        print(row.format(label, *(fmt(medians[n][key]) for n in names)))
    if BASELINE not in medians:
        return
    base = medians[BASELINE]
    others = [n for n in names if n != BASELINE]
    print(f"\nratio vs {BASELINE} (higher/lower: which way is better)")
    row = "{:<38}" + " {:>20}" * len(others)
    print(row.format("metric", *others))
    for key, label, higher in METRICS:
        better = {True: "higher", False: "lower", None: "info"}[higher]
        ratios = [medians[n][key] / base[key] if base[key] else math.nan for n in others]
        print(row.format(f"{label} ({better})", *(f"{r:.2f}x" for r in ratios)))
    # Issue 7's targets: drain and enqueue (with confirms, Celeriac's only mode) >= 2x Celery.
    print("\ntargets (issue 7): >= 2x celery")
    checks = [
        ("drain/s", "drain_per_s", "drain_per_s"),
        ("steady drain/s", "steady_drain_per_s", "steady_drain_per_s"),
        ("enqueue/s vs celery default (confirm off)", "enqueue_per_s", "enqueue_per_s"),
        ("enqueue/s vs celery confirm_publish on", "enqueue_per_s", "enqueue_confirmed_per_s"),
    ]
    for name in (n for n in others if n.startswith("celeriac")):
        for label, mine, theirs in checks:
            ratio = medians[name][mine] / base[theirs]
            verdict = "met" if ratio >= 2 else "MISSED"
            print(f"  {name:<22} {label:<44} {ratio:5.2f}x  {verdict}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=10000, help="tasks to enqueue and drain")
    parser.add_argument("--repeat", type=int, default=3, help="runs per system (median)")
    parser.add_argument("--calls", type=int, default=300, help="sequential round trips")
    parser.add_argument("--amqp", default="amqp://guest:guest@127.0.0.1:5672")
    parser.add_argument("--redis", default="redis://127.0.0.1:6379/12")
    parser.add_argument("--systems", nargs="*", help="names to run (default: all)")
    parser.add_argument("--json", type=Path, help="also write all runs and medians here")
    args = parser.parse_args()
    compile_sources()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))

    systems = [s for s in SYSTEMS if not args.systems or s.name in args.systems]
    runs: dict[str, list[dict[str, float]]] = {s.name: [] for s in systems}
    load = os.getloadavg()[0]
    started, started_on = time.perf_counter(), revision()
    for i in range(args.repeat):
        for system in systems:  # interleaved, so drift on the machine hits all alike
            result = run_once(system, args.n, args.calls, args.amqp, args.redis)
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
    print(
        f"\nN={args.n}, {args.calls} round trips, median of {args.repeat}, {os.cpu_count()} CPUs, "
        f"load avg {load:.1f} -> {os.getloadavg()[0]:.1f}, "
        f"{time.perf_counter() - started:.0f} s\n{versions(started_on)}"
    )
    print_tables(medians)
    if args.json:
        args.json.write_text(
            json.dumps({"args": vars(args) | {"json": str(args.json)}, "runs": runs}, indent=2)
        )


if __name__ == "__main__":
    main()
