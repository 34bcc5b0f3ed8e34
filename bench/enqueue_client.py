"""The client side of enqueueing alone: time N sends to a broker, and say where a send's time goes.

    python bench/enqueue_client.py URL [--n 20000] [--mode delay|send_many|group|huey|lpush]
        [--batch K]
    py-spy record -r 400 -f raw -o out.txt -- python bench/enqueue_client.py URL ...
    python bench/enqueue_client.py --summarize out.txt --us 124    # us per send, from a run

``delay``: one ``echo.delay(i)`` at a time; ``send_many``: ``app.send_many`` of ``--batch`` calls;
``group``: ``group(...).apply_async()`` of ``--batch`` calls (what a batch cost before
``send_many``); ``huey``: ``RedisHuey`` on the same Redis, one call at a time (URL: redis://);
``lpush``: no task queue, one redis-py ``LPUSH`` at a time of a Celeriac envelope built once:
the floor of any enqueue that is one redis-py command (Huey's is one ``LPUSH``).
One warm-up send first (connections opened, scripts loaded), then the timed loop; it prints the
sends per second, and wall and process CPU microseconds per send. Queues are purged afterwards.
``PYTHONPATH=<checkout>/src`` measures another checkout.

``--summarize`` reads py-spy's raw stacks and splits the samples under the timed loop into
categories (socket send, redis-py, JSON, ...), scaled to ``--us`` (the CPU per send the run
printed): a profile summary of one send.
"""

from __future__ import annotations

import argparse
import collections
import json
import re
import time
from typing import Any

CATEGORIES = [  # (name, frame names, "own": the innermost frame only, else anywhere below)
    ("socket send (kernel: loopback TCP, waking the server)", ["send_packed_command"], "own"),
    ("socket receive / wait for the reply", ["read_from_socket", "_socket_can_read"], "own"),
    ("SQLite commit", ["SQLiteFile.write"], "own"),
    ("SQLite BEGIN IMMEDIATE", ["_begin"], "own"),
    ("SQLite INSERT", ["insert_rows"], "own"),
    ("check arguments", ["Task.check_arguments"], "any"),
    ("JSON: task body", ["SerializerRegistry.dumps"], "any"),
    ("JSON + base64: Redis envelope", ["encode_envelope"], "any"),
    ("JSON: header/property columns", ["SQLiteBroker.rows", "PostgresBroker.rows"], "any"),
    ("ids (task id, delivery tag)", ["new_id", "uuid4", "UUID"], "any"),
    (
        "route and option resolution",
        [
            *("resolve_route", "priority_of", "serializer_of", "compression_of", "shadow_of"),
            *("time_limits_of", "expires_of", "eta_of", "lineage", "reply_to_of", "keyring_of"),
            *("check_options", "Celeriac.topology", "ignore_result_of", "check_size"),
            "call_template",
        ],
        "any",
    ),
    ("message headers (build_task_message, reprs)", ["build_task_message"], "any"),
    ("publish signals, tracing hooks", ["announce", "publishing", "_tracer"], "any"),
    (
        "redis-py command machinery (pack, pool, retry, parse)",
        ["execute_command", "ConnectionPool", "evalsha", "pack", "DeadlineRetry", "Encoder"],
        "any",
    ),
    ("Celeriac glue (calls between the above)", ["Celeriac.", "Task.", "Broker", "publish"], "any"),
]


def summarize(path: str, us: float, root: str = "timed_loop") -> None:
    counts: collections.Counter[str] = collections.Counter()
    total = 0
    with open(path) as f:
        lines = f.readlines()
    for line in lines:
        stack, _, n = line.rstrip().rpartition(" ")
        frames = [re.sub(r" \(.*\)$", "", f) for f in stack.split(";")]
        marks = [i for i, f in enumerate(frames) if f.endswith(root)]
        if not marks:
            continue
        below = frames[marks[-1] + 1 :]
        total += int(n)
        for name, keys, where in CATEGORIES:
            hay = below[-1:] if where == "own" else below
            if any(k in f for f in hay for k in keys):
                counts[name] += int(n)
                break
        else:
            counts["other"] += int(n)
    for name, n in counts.most_common():
        print(f"{us * n / total:7.1f} us {100 * n / total:5.1f}%  {name}")
    print(f"{us:7.1f} us  one send ({total} samples)")


MODES = ["delay", "send_many", "group", "huey", "lpush"]


def sender(url: str, mode: str, batch: int) -> tuple[Any, Any]:
    """(send(first, last), cleanup) for the mode."""
    if mode == "huey":
        from huey import RedisHuey

        huey = RedisHuey("enqueue-bench", url=url)

        @huey.task()
        def hecho(i: int) -> int:
            return i

        def send_huey(first: int, last: int) -> None:
            for i in range(first, last):
                hecho(i)

        return send_huey, huey.flush

    from celeriac import Celeriac, group

    app = Celeriac("enqueue_bench", broker=url, backend=url)

    @app.task(name="bench.echo")
    def echo(i: int) -> int:
        return i

    if mode == "lpush":
        import redis

        from celeriac.transports.redis.envelope import encode_envelope

        p = app.prepare_message("bench.echo", (0,), {})
        envelope = encode_envelope(p.message, p.route, p.priority, "celeriac-1")
        client = redis.Redis.from_url(url)
        key = "enqueue-bench.lpush"

        def send_lpush(first: int, last: int) -> None:
            for _ in range(first, last):
                client.lpush(key, envelope)

        return send_lpush, lambda: client.delete(key)

    def send(first: int, last: int) -> None:
        if mode == "delay":
            for i in range(first, last):
                echo.delay(i)
            return
        for start in range(first, last, batch):
            sigs = [echo.s(i) for i in range(start, min(last, start + batch))]
            if mode == "send_many":
                app.send_many(sigs)
            else:
                group(sigs, app=app).apply_async()

    return send, lambda: app.broker.purge("celery")


def timed_loop(send: Any, n: int) -> None:
    send(0, n)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("url", nargs="?")
    parser.add_argument("--n", type=int, default=20000)
    parser.add_argument("--mode", default="delay", choices=MODES)
    parser.add_argument("--batch", type=int, default=1000)
    parser.add_argument("--summarize", metavar="RAW", help="py-spy raw output to summarize")
    parser.add_argument("--us", type=float, help="CPU us per send of the profiled run")
    args = parser.parse_args()
    if args.summarize:
        summarize(args.summarize, args.us or 100.0)
        return
    send, cleanup = sender(args.url, args.mode, args.batch)
    send(-1, 0)  # warm-up: connections, scripts, imports
    wall, cpu = time.perf_counter(), time.process_time()
    timed_loop(send, args.n)
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    cleanup()
    out = {"mode": args.mode, "per_s": args.n / wall, "wall_us": 1e6 * wall / args.n}
    out["cpu_us"] = 1e6 * cpu / args.n
    print(json.dumps({k: round(v, 1) if isinstance(v, float) else v for k, v in out.items()}))


if __name__ == "__main__":
    main()
