"""Dramatiq on RabbitMQ (``RabbitmqBroker``), results in its Redis backend (as in ANCHORS.md).

``confirm_delivery`` (off by default) is on when ``BENCH_CONFIRM=1``. Result keys carry the run's
prefix (``use_namespace_prefix_keys``) so the bench can delete them afterwards.
"""

import os

import dramatiq
from common import BROKER_DB_URL, PREFIX, done
from dramatiq.brokers.rabbitmq import RabbitmqBroker
from dramatiq.results import Results
from dramatiq.results.backends import RedisBackend

AMQP_URL = os.environ.get("BENCH_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/%2F")
broker = RabbitmqBroker(url=AMQP_URL, confirm_delivery=os.environ.get("BENCH_CONFIRM") == "1")
backend = RedisBackend(
    url=BROKER_DB_URL, namespace=f"{PREFIX}dramatiq-results", use_namespace_prefix_keys=True
)
broker.add_middleware(Results(backend=backend))
dramatiq.set_broker(broker)


@dramatiq.actor(store_results=True, result_ttl=600_000)
def echo_actor(i: int) -> int:
    done()
    return i


class _Result:
    def __init__(self, message: dramatiq.Message) -> None:
        self.message = message

    def get(self, timeout: float) -> int:
        return self.message.get_result(block=True, timeout=int(timeout * 1000))


class echo:
    @staticmethod
    def delay(i: int) -> _Result:
        return _Result(echo_actor.send(i))
