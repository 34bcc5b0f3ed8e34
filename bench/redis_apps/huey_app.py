"""Huey on Redis (``RedisHuey``), its results in the same Redis, under the run's key prefix."""

from common import BROKER_DB_URL, PREFIX, done
from huey import RedisHuey

# clean_name=False: its keys keep the prefix (huey.redis.<prefix>huey), so the bench finds them
huey = RedisHuey(f"{PREFIX}huey", url=BROKER_DB_URL, clean_name=False)


@huey.task()
def echo_task(i: int) -> int:
    done()
    return i


class _Result:
    def __init__(self, result: object) -> None:
        self.result = result

    def get(self, timeout: float) -> int:
        return self.result.get(blocking=True, timeout=timeout)  # type: ignore[attr-defined, no-any-return]


class echo:
    @staticmethod
    def delay(i: int) -> _Result:
        return _Result(echo_task(i))
