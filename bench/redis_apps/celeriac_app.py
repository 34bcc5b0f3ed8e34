"""Celeriac on Redis: broker and results in Celery's layout under the run's key prefix."""

import os

from common import BROKER_DB_URL, PREFIX, done

from celeriac import Celeriac

URL = f"{BROKER_DB_URL}?global_keyprefix={PREFIX}"
app = Celeriac("bench_redis", broker=URL, backend=URL)
# To compare with code whose default multiplier differed (4, before per-task fairness).
if os.environ.get("BENCH_PREFETCH_MULTIPLIER"):
    app.conf.worker_prefetch_multiplier = int(os.environ["BENCH_PREFETCH_MULTIPLIER"])


@app.task(name="bench.echo")
def echo(i: int) -> int:
    done()
    return i
