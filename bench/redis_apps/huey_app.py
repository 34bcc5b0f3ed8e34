"""Huey on Redis (``RedisHuey``), results in the same Redis (``huey_consumer huey_app.huey``).

Huey names its keys ``huey.<kind>.<name>``; the storage puts the run's prefix in front so the
bench's ``{prefix}*`` clean-up finds them.
"""

from common import BROKER_DB_URL, PREFIX, done
from huey import RedisHuey
from huey.api import Result
from huey.storage import RedisStorage

_KEYS = ("queue_key", "schedule_key", "result_key", "counter_key", "notify_prefix")


class _PrefixedStorage(RedisStorage):  # type: ignore[misc]
    def __init__(self, name: str, **kwargs: object) -> None:
        super().__init__(name, **kwargs)
        for attr in _KEYS:
            setattr(self, attr, PREFIX + getattr(self, attr))


huey = RedisHuey("bench", url=BROKER_DB_URL, storage_class=_PrefixedStorage)


@huey.task()
def echo_task(i: int) -> int:
    done()
    return i


class _Result:
    def __init__(self, result: Result) -> None:
        self.result = result

    def get(self, timeout: float) -> int:
        value: int = self.result.get(blocking=True, timeout=timeout)
        return value


class echo:
    @staticmethod
    def delay(i: int) -> _Result:
        return _Result(echo_task(i))
