"""RQ on Redis (``rq worker -w rq.worker.SimpleWorker``: no fork per job)."""

from common import BROKER_DB_URL, PREFIX, done
from redis import Redis
from rq import Queue

connection = Redis.from_url(BROKER_DB_URL)
queue = Queue(f"{PREFIX}rq", connection=connection)


def echo_job(i: int) -> int:
    done()
    return i


class _Result:
    def __init__(self, job) -> None:
        self.job = job

    def get(self, timeout: float) -> int:
        result = self.job.latest_result(timeout=max(1, int(timeout)))  # blocks on a stream
        if result is None:
            raise TimeoutError(self.job.id)
        return result.return_value


class echo:
    @staticmethod
    def delay(i: int) -> _Result:
        return _Result(queue.enqueue(echo_job, i))
