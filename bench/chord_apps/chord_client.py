"""``chord_client.py SYSTEM N IDLE SETTLE``: one chord of N ``add`` tasks with a ``tsum`` body.

Prints JSON: seconds to send the chord, seconds from sending to the body's result, and Redis
INFO snapshots (command counts, CPU, network) taken IDLE s before sending (background), right
before sending, at the result, and SETTLE s later (what workers still do after the body).
"""

from __future__ import annotations

import importlib
import json
import os
import sys
import time

import redis


def snapshot(server: redis.Redis) -> dict[str, float]:
    out: dict[str, float] = {}
    for name, stats in server.info("commandstats").items():
        out["cmd:" + name.removeprefix("cmdstat_")] = float(stats["calls"])
    cpu = server.info("cpu")
    out["cpu_s"] = float(cpu["used_cpu_user"]) + float(cpu["used_cpu_sys"])
    stats = server.info("stats")
    for key in ("total_net_input_bytes", "total_net_output_bytes"):
        out[key] = float(stats[key])
    out["t"] = time.perf_counter()
    return out


def main() -> None:
    system, n, idle, settle = sys.argv[1], int(sys.argv[2]), float(sys.argv[3]), float(sys.argv[4])
    mod = importlib.import_module(f"chord_{system}_app")
    server = redis.Redis.from_url(os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/12"))
    if mod.add.delay(1, 2).get(timeout=60) != 3:  # connections open, workers awake
        raise SystemExit("warm-up gave a wrong result")
    before_idle = snapshot(server)
    time.sleep(idle)
    before = snapshot(server)
    start = time.perf_counter()
    result = mod.chord([mod.add.s(i, i) for i in range(n)])(mod.tsum.s())
    sent = time.perf_counter()
    # Celery only: BENCH_FOLLOW_PARENTS=0 waits for the body alone, as Celeriac's get() does.
    follow = {"follow_parents": False} if os.environ.get("BENCH_FOLLOW_PARENTS") == "0" else {}
    value = result.get(timeout=max(300, n / 20), **follow)
    end = time.perf_counter()
    at_result = snapshot(server)
    time.sleep(settle)
    after = snapshot(server)
    if value != n * (n - 1):
        raise SystemExit(f"wrong chord result {value}, expected {n * (n - 1)}")
    print(
        json.dumps(
            {
                "apply_s": sent - start,
                "wall_s": end - start,
                "snapshots": [before_idle, before, at_result, after],
            }
        )
    )


if __name__ == "__main__":
    main()
