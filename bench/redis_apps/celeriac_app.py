"""Celeriac on Redis: broker and results in Celery's layout under the run's key prefix."""

from common import BROKER_DB_URL, PREFIX, done

from celeriac import Celeriac

URL = f"{BROKER_DB_URL}?global_keyprefix={PREFIX}"
app = Celeriac("bench_redis", broker=URL, backend=URL)


@app.task(name="bench.echo")
def echo(i: int) -> int:
    done()
    return i
