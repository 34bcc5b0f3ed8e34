"""Huey on Redis (``RedisHuey``, its blocking BRPOP consumer), results in the same Redis.

Huey names its keys ``huey.<kind>.<name>``: the name carries the run's prefix, so the bench
finds them with ``huey.*<prefix>*``.
"""

from common import BROKER_DB_URL, PREFIX, done
from huey import RedisHuey

huey = RedisHuey(f"{PREFIX}huey", url=BROKER_DB_URL)


@huey.task()
def echo_task(i: int) -> int:
    done()
    return i


class _Result:
    def __init__(self, result) -> None:
        self.result = result

    def get(self, timeout: float) -> int:
        return self.result(blocking=True, timeout=timeout)


class echo:
    @staticmethod
    def delay(i: int) -> _Result:
        return _Result(echo_task(i))
