"""Celery 5 on RabbitMQ with its defaults (prefork, prefetch x4, early ack), results ``rpc://``.

``confirm_publish`` (a kombu transport option, off by default) is on when ``BENCH_CONFIRM=1``.
"""

import os

from celery import Celery
from common import done

AMQP_URL = os.environ.get("BENCH_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672//")
app = Celery("bench_amqp", broker=AMQP_URL, backend="rpc://")
app.conf.update(broker_connection_retry_on_startup=True)
if os.environ.get("BENCH_CONFIRM") == "1":
    app.conf.broker_transport_options = {"confirm_publish": True}


@app.task(name="bench.echo")
def echo(i: int) -> int:
    done()
    return i
