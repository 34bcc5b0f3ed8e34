"""Celery 5 on Redis with its defaults (prefork, prefetch x4, early ack, Redis results)."""

from celery import Celery
from common import BROKER_DB_URL, PREFIX, done

app = Celery("bench_redis", broker=BROKER_DB_URL, backend=BROKER_DB_URL)
app.conf.update(
    broker_transport_options={"global_keyprefix": PREFIX},
    result_backend_transport_options={"global_keyprefix": PREFIX},
    broker_connection_retry_on_startup=True,
)


@app.task(name="bench.echo")
def echo(i: int) -> int:
    done()
    return i
