"""Dramatiq on Redis with its Redis result backend (``dramatiq dramatiq_app``)."""

import dramatiq
from common import BROKER_DB_URL, PREFIX, done
from dramatiq.brokers.redis import RedisBroker
from dramatiq.results import Results
from dramatiq.results.backends import RedisBackend

broker = RedisBroker(url=BROKER_DB_URL, namespace=f"{PREFIX}dramatiq")
backend = RedisBackend(url=BROKER_DB_URL, namespace=f"{PREFIX}dramatiq-results")
broker.add_middleware(Results(backend=backend))
dramatiq.set_broker(broker)


# Dramatiq names result keys by a hash, without the namespace: keep them briefly so a run
# leaves nothing behind for long.
@dramatiq.actor(store_results=True, result_ttl=60_000)
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
