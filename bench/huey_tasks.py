"""The benchmark's no-op task for Huey: SqliteHuey on the file named by ``HUEY_BENCH_DB``."""

import os

from huey import SqliteHuey

huey = SqliteHuey("bench", filename=os.environ["HUEY_BENCH_DB"])


@huey.task()
def echo(i: int) -> int:
    return i
