"""One client process: ``client.py SYSTEM {enqueue|roundtrip} N`` prints JSON timings.

``BENCH_BATCH=K`` (Celeriac only): enqueue with ``app.send_many`` in batches of K calls
instead of one ``delay()`` at a time.
"""

from __future__ import annotations

import importlib
import json
import os
import sys
import time


def main() -> None:
    system, action, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
    module = importlib.import_module(f"{system}_app")
    echo = module.echo
    batch = int(os.environ.get("BENCH_BATCH") or 0)
    if action == "enqueue" and batch:
        app = module.app
        start = time.perf_counter()
        for first in range(0, n, batch):
            app.send_many([echo.s(i) for i in range(first, min(n, first + batch))])
        print(json.dumps({"seconds": time.perf_counter() - start}))
        return
    if action == "enqueue":
        start = time.perf_counter()
        for i in range(n):
            echo.delay(i)
        print(json.dumps({"seconds": time.perf_counter() - start}))
        return
    echo.delay(-1).get(timeout=30)  # connections open, worker awake
    latencies = []
    for i in range(n):
        start = time.perf_counter()
        if echo.delay(i).get(timeout=10) != i:
            raise SystemExit(f"wrong result for {i}")
        latencies.append((time.perf_counter() - start) * 1000)
    print(json.dumps({"latencies_ms": latencies}))


if __name__ == "__main__":
    main()
