"""One client process: ``client.py {celeriac|huey} {enqueue|roundtrip} N`` prints JSON timings.

Run by sqlite_vs_huey.py in a fresh interpreter, so import and connection set-up never land in
the bench process and each run talks to its own database file.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable

Send = Callable[[int], object]
Call = Callable[[int, float], int]


def celeriac_ops() -> tuple[Send, Call]:
    from celeriac_tasks import echo

    return echo.delay, lambda i, timeout: echo.delay(i).get(timeout=timeout)


def huey_ops() -> tuple[Send, Call]:
    from huey_tasks import echo

    # Huey's defaults: blocking get polls its store from 50 ms up, x1.15 per miss.
    return echo, lambda i, timeout: echo(i)(blocking=True, timeout=timeout)


def enqueue(send: Send, n: int) -> dict[str, float]:
    # The first send also opens the connection; over thousands of sends that is noise.
    start = time.perf_counter()
    for i in range(n):
        send(i)
    return {"seconds": time.perf_counter() - start}


def roundtrip(call: Call, n: int) -> dict[str, list[float]]:
    # One untimed call first: an idle Huey consumer may be deep in its poll back-off (up to 10 s).
    call(-1, 30.0)
    latencies = []
    for i in range(n):
        start = time.perf_counter()
        if call(i, 10.0) != i:
            raise SystemExit(f"wrong result for {i}")
        latencies.append((time.perf_counter() - start) * 1000)
    return {"latencies_ms": latencies}


def main() -> None:
    system, action, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
    send, call = celeriac_ops() if system == "celeriac" else huey_ops()
    out = enqueue(send, n) if action == "enqueue" else roundtrip(call, n)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
