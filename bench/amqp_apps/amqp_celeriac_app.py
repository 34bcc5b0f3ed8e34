"""Celeriac on RabbitMQ (``BENCH_AMQP_URL``), results ``rpc://`` or in Redis (``BENCH_RESULTS``).

Celeriac waits for RabbitMQ's publisher confirm unless ``BENCH_CONFIRM_PUBLISH=0`` (the
``confirm_publish=False`` transport option), and then still when ``BENCH_CONFIRM=1``. A
client process opens the rpc backend before sending (``BENCH_CLIENT=1``), as Celery's client
does on its first send: only then do tasks carry a ``reply_to`` and the worker publishes their
results, as Celery's worker does.
"""

import os

from common import BROKER_DB_URL, PREFIX, done

from celeriac import Celeriac

AMQP_URL = os.environ.get("BENCH_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672//")
if os.environ.get("BENCH_RESULTS", "rpc") == "redis":
    BACKEND = f"{BROKER_DB_URL}?global_keyprefix={PREFIX}"
else:
    BACKEND = "rpc://"
CONFIRM = os.environ.get("BENCH_CONFIRM_PUBLISH") != "0" or os.environ.get("BENCH_CONFIRM") == "1"
app = Celeriac(
    "bench_amqp",
    broker=AMQP_URL,
    backend=BACKEND,
    broker_transport_options={"confirm_publish": CONFIRM},
)
# To compare with code whose default multiplier differed (4, before per-task fairness).
if os.environ.get("BENCH_PREFETCH_MULTIPLIER"):
    app.conf.worker_prefetch_multiplier = int(os.environ["BENCH_PREFETCH_MULTIPLIER"])


@app.task(name="bench.echo")
def echo(i: int) -> int:
    done()
    return i


if os.environ.get("BENCH_CLIENT") == "1":
    app.backend  # noqa: B018 - opens the reply queue, so results are sent back to us
