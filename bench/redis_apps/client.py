"""One client process: ``client.py SYSTEM {enqueue|roundtrip} N`` prints JSON timings."""

from __future__ import annotations

import importlib
import json
import sys
import time


def main() -> None:
    system, action, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
    echo = importlib.import_module(f"{system}_app").echo
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
