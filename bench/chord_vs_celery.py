"""A 10,000-task chord on Redis: Celeriac vs Celery, on one Redis, in one run.

    .venv/bin/python bench/chord_vs_celery.py [--n 10000] [--repeat 3] [--private-redis]

Header: N ``add(i, i)`` tasks (no-op: returns the sum); body: ``tsum`` (sums the header results).
Broker and results on the Redis at ``--redis`` (DB 12, a fresh key prefix per run, deleted
afterwards), both systems with 2 worker processes (prefork ``-c 2``; Celeriac also 2 x solo)
started before the chord and idle. One fresh client process (``chord_apps/chord_client.py``)
sends the chord and waits for the body's result. Per system and run:

1. **wall s**: from the call that applies the chord to the body's result in the client, the
   client's sending of the N header messages included (**apply s** is that part alone);
2. **Redis commands per header task**: ``INFO commandstats`` calls summed over all commands,
   from just before the apply to ``--settle`` s after the body's result (so the workers' last
   acknowledgements count), divided by N. Commands run inside Lua scripts count too (Redis counts
   them like any other); **script calls per task** counts the EVAL/EVALSHA calls themselves;
3. **Redis CPU us** and **network bytes** per header task over the same window (``INFO``);
4. worker RSS after the chord and worker CPU per header task (start-up and idle included).

``INFO`` is server-wide: other clients of the same Redis count too. The client samples the
server for ``--idle`` s before the apply with the workers idle: ``background cmds/s`` is that
rate, and ``background share`` its estimated part of the window's commands (idle polling of our
own workers included). If it is not small, use ``--private-redis`` (a ``redis-server`` started
for the run on a free port, no persistence, stopped afterwards) for clean counts.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.metadata
import json
import math
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import redis
from amqp_vs_peers import revision
from redis_vs_peers import fmt
from sqlite_vs_huey import stop, tree_usage

HERE = Path(__file__).resolve().parent
APPS = HERE / "chord_apps"
PY = sys.executable
CELERIAC = [PY, "-m", "celeriac", "-A", "chord_celeriac_app:app", "worker", "-l", "warning"]
CELERY = [PY, "-m", "celery", "-A", "chord_celery_app", "worker", "-l", "warning"]
BASELINE = "celery -c 2"


@dataclass(frozen=True)
class System:
    name: str
    app: str  # chord_apps/chord_<app>_app.py
    workers: list[list[str]]
    env: dict[str, str] = field(default_factory=dict)


SYSTEMS = [
    System("celeriac -c 2", "celeriac", [[*CELERIAC, "-c", "2"]]),
    System(
        "celeriac 2xsolo",
        "celeriac",
        [[*CELERIAC, "-P", "solo", "-n", f"w{i}@bench"] for i in (1, 2)],
    ),
    System(BASELINE, "celery", [[*CELERY, "-c", "2"]]),
    # Celery's AsyncResult.get() follows parents by default: while it waits it reads the result
    # of every unfinished header task again and again (GET storms from the client). Celeriac's
    # get() waits for the body alone; this variant makes Celery's client do the same.
    System(
        "celery nofollow",
        "celery",
        [[*CELERY, "-c", "2"]],
        env={"BENCH_FOLLOW_PARENTS": "0"},
    ),
]

# (key, label, is higher better? None: context only)
METRICS = [
    ("wall_s", "chord wall s (apply -> body result)", False),
    ("header_per_s", "header tasks/s (N / wall)", True),
    ("apply_s", "  of which apply s (client sends)", False),
    ("cmds_per_task", "Redis commands per header task", False),
    ("scripts_per_task", "  of which script calls (EVAL*)", False),
    ("redis_cpu_us_per_task", "Redis CPU us per header task", False),
    ("net_in_per_task", "Redis bytes in per header task", False),
    ("net_out_per_task", "Redis bytes out per header task", False),
    ("worker_cpu_ms_per_task", "worker CPU ms per header task", False),
    ("rss_mb", "worker RSS MB after chord", False),
    ("background_per_s", "background cmds/s (idle, before)", None),
    ("background_share", "background share of window cmds", None),
]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def private_redis() -> Iterator[str]:
    """A redis-server of our own (no persistence) for the whole bench; stopped on the way out."""
    port = free_port()
    server = subprocess.Popen(
        [
            *("redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", ""),
            *("--appendonly", "no", "--daemonize", "no", "--dir", tempfile.gettempdir()),
        ],
        stdout=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        client = redis.Redis(port=port)
        for _ in range(100):
            with contextlib.suppress(redis.ConnectionError):
                client.ping()
                break
            time.sleep(0.05)
        client.close()
        yield f"redis://127.0.0.1:{port}/12"
    finally:
        stop(server)


def run_once(system: System, n: int, url: str, idle: float, settle: float) -> dict[str, float]:
    prefix = f"bench-chord-{uuid.uuid4().hex[:8]}:"
    env = {
        **os.environ,
        **system.env,
        "PYTHONPATH": str(APPS),
        "BENCH_REDIS_URL": url,
        "BENCH_PREFIX": prefix,
    }
    client = redis.Redis.from_url(url)
    workers: list[subprocess.Popen[bytes]] = []
    with tempfile.TemporaryDirectory(prefix="bench-chord-") as tmp:
        logs = [Path(tmp) / f"worker{i}.log" for i in range(len(system.workers))]
        try:
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
            time.sleep(1.0)  # both worker trees up (the client also waits for a warm-up task)
            out = subprocess.run(
                [PY, str(APPS / "chord_client.py"), system.app, str(n), str(idle), str(settle)],
                env=env,
                capture_output=True,
                text=True,
                timeout=900,
            )
            if out.returncode != 0:
                raise RuntimeError(f"{system.name} client failed:\n{out.stderr[-3000:]}")
            usage = [tree_usage(w.pid) for w in workers]
            for w in workers:
                if w.poll() is not None:
                    raise RuntimeError(f"{system.name}: a worker exited with {w.returncode}")
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
    report = json.loads(out.stdout)
    before_idle, before, _at_result, after = report["snapshots"]

    def delta(key: str, a: dict[str, float] = before, b: dict[str, float] = after) -> float:
        return b.get(key, 0.0) - a.get(key, 0.0)

    cmds = {k[4:]: delta(k) for k in after if k.startswith("cmd:") and delta(k)}
    total = sum(cmds.values())
    idle_cmds = sum(delta(k, before_idle, before) for k in before if k.startswith("cmd:"))
    background_per_s = idle_cmds / (before["t"] - before_idle["t"])
    window = after["t"] - before["t"]
    return {
        "wall_s": report["wall_s"],
        "header_per_s": n / report["wall_s"],
        "apply_s": report["apply_s"],
        "cmds_per_task": total / n,
        "scripts_per_task": sum(cmds.get(k, 0.0) for k in ("eval", "evalsha")) / n,
        "redis_cpu_us_per_task": 1e6 * delta("cpu_s") / n,
        "net_in_per_task": delta("total_net_input_bytes") / n,
        "net_out_per_task": delta("total_net_output_bytes") / n,
        "worker_cpu_ms_per_task": 1000 * sum(u["cpu_s"] for u in usage) / n,
        "rss_mb": sum(u["rss_mb"] for u in usage),
        "background_per_s": background_per_s,
        "background_share": background_per_s * window / total if total else math.nan,
        **{f"cmd_{k}": v / n for k, v in cmds.items()},
    }


def print_tables(runs: dict[str, list[dict[str, float]]]) -> None:
    medians = {
        name: {key: statistics.median(r[key] for r in rs) for key, _, _ in METRICS}
        for name, rs in runs.items()
    }
    names = list(medians)
    row = "{:<38}" + " {:>16}" * len(names)
    print(row.format("metric", *names))
    for key, label, _ in METRICS:
        print(row.format(label, *(fmt(medians[n][key]) for n in names)))
    print("\nRedis commands per header task by command (median over runs)")
    commands = sorted({k for rs in runs.values() for r in rs for k in r if k.startswith("cmd_")})
    per_cmd = {
        name: {c: statistics.median(r.get(c, 0.0) for r in rs) for c in commands}
        for name, rs in runs.items()
    }
    for c in sorted(commands, key=lambda c: -max(per_cmd[n][c] for n in names)):
        if max(per_cmd[n][c] for n in names) >= 0.01:
            print(row.format("  " + c[4:].upper(), *(f"{per_cmd[n][c]:.2f}" for n in names)))
    celeries = [n for n in names if n.startswith("celery ")]
    if not celeries:
        return
    baseline = BASELINE if BASELINE in medians else celeries[0]
    base = medians[baseline]
    print(f"\nratio vs {baseline}")
    others = [n for n in names if n != baseline]
    row = "{:<46}" + " {:>16}" * len(others)
    for key, label, higher in METRICS:
        if higher is None:
            continue
        better = "higher" if higher else "lower"
        ratios = [medians[n][key] / base[key] if base[key] else math.nan for n in others]
        print(row.format(f"{label} ({better})", *(f"{r:.2f}x" for r in ratios)))
    print("\ntarget (issue 5): chord >= 3x faster than celery (celery wall / celeriac wall)")
    for name in (n for n in names if n.startswith("celeriac")):
        for celery in celeries:
            speedup = medians[celery]["wall_s"] / medians[name]["wall_s"]
            verdict = "met" if speedup >= 3 else "MISSED"
            print(f"  {name:<18} vs {celery:<18} {speedup:5.2f}x  {verdict}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=10000, help="header tasks in the chord")
    parser.add_argument("--repeat", type=int, default=3, help="runs per system (median)")
    parser.add_argument("--redis", default="redis://127.0.0.1:6379/12")
    parser.add_argument(
        "--private-redis", action="store_true", help="start a redis-server for the bench"
    )
    parser.add_argument("--idle", type=float, default=1.0, help="s of background sampling")
    parser.add_argument("--settle", type=float, default=0.5, help="s counted after the result")
    parser.add_argument("--systems", nargs="*", help="names to run (default: all)")
    parser.add_argument("--json", type=Path, help="also write all runs here")
    args = parser.parse_args()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))

    systems = [s for s in SYSTEMS if not args.systems or s.name in args.systems]
    runs: dict[str, list[dict[str, float]]] = {s.name: [] for s in systems}
    load = os.getloadavg()[0]
    started, started_on = time.perf_counter(), revision()
    with private_redis() if args.private_redis else contextlib.nullcontext(args.redis) as url:
        server = redis.Redis.from_url(url)
        redis_version = server.info("server")["redis_version"]
        server.close()
        for i in range(args.repeat):
            for system in systems:  # interleaved, so drift on the machine hits all alike
                result = run_once(system, args.n, url, args.idle, args.settle)
                runs[system.name].append(result)
                print(
                    f"run {i + 1} {system.name}: "
                    + ", ".join(
                        f"{k}={fmt(result[k])}" for k, _, _ in METRICS if not k.startswith("cmd_")
                    ),
                    flush=True,
                )
    now = revision()
    versions = ", ".join(
        [
            f"commit {started_on}"
            + (f" -> {now} (CHANGED DURING THE RUN)" if now != started_on else "")
        ]
        + [f"{p} {importlib.metadata.version(p)}" for p in ("celeriac", "celery", "kombu", "redis")]
    )
    print(
        f"\nN={args.n} header tasks, median of {args.repeat}, {os.cpu_count()} CPUs, "
        f"load avg {load:.1f} -> {os.getloadavg()[0]:.1f}, {time.perf_counter() - started:.0f} s, "
        f"{'private' if args.private_redis else 'shared'} Redis {redis_version} ({url})\n"
        f"{versions}"
    )
    print_tables(runs)
    if args.json:
        args.json.write_text(
            json.dumps({"args": vars(args) | {"json": str(args.json)}, "runs": runs}, indent=2)
        )


if __name__ == "__main__":
    main()
