"""The benchmark's no-op task for Celeriac.

Broker and results share the SQLite file named by ``CELERIAC_BROKER_URL`` (Celeriac reads it).
"""

import os

from celeriac import Celeriac

app = Celeriac("bench")
# To compare with code whose default multiplier differed (4, before per-task fairness).
if os.environ.get("BENCH_PREFETCH_MULTIPLIER"):
    app.conf.worker_prefetch_multiplier = int(os.environ["BENCH_PREFETCH_MULTIPLIER"])


@app.task
def echo(i: int) -> int:
    return i
