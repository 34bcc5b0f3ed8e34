"""No head-of-line blocking by default: a worker leases only for the slots it has free."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import pytest

from celeriac import Celeriac
from celeriac.worker import Worker

DURATION = 0.4


@pytest.fixture
def app() -> Iterator[Celeriac]:
    app = Celeriac("fairness", broker_url="memory://")
    yield app
    app.close()


def run_workers(app: Celeriac, count: int, **options: object) -> list[Worker]:
    workers = [
        Worker(app, pool="solo", concurrency=1, install_signal_handlers=False, **options)
        for _ in range(count)
    ]
    for w in workers:
        threading.Thread(target=w.start, daemon=True).start()
        assert w.ready.wait(10)
    return workers


def test_two_solo_workers_share_four_tasks_two_each(app: Celeriac) -> None:
    ran_by: list[str] = []

    @app.task
    def slow(i: int) -> int:
        ran_by.append(threading.current_thread().name)
        time.sleep(DURATION)
        return i

    workers = run_workers(app, 2)
    try:
        started = time.monotonic()
        results = [slow.delay(i) for i in range(4)]
        assert [r.get(timeout=10) for r in results] == [0, 1, 2, 3]
        elapsed = time.monotonic() - started
    finally:
        for w in workers:
            w.stop()
    # Each worker ran two: four tasks in two rounds, not four rounds on one worker.
    assert sorted(ran_by.count(name) for name in set(ran_by)) == [2, 2]
    assert elapsed < 3 * DURATION


def test_a_larger_multiplier_prefetches_behind_the_running_task(app: Celeriac) -> None:
    """The opt-in: with a multiplier of 4, the first worker to fetch leases all four."""
    ran_by: list[str] = []

    @app.task
    def slow(i: int) -> int:
        ran_by.append(threading.current_thread().name)
        time.sleep(DURATION)
        return i

    results = [slow.delay(i) for i in range(4)]
    first = run_workers(app, 1, prefetch_multiplier=4)  # its first fetch leases all four
    second = run_workers(app, 1, prefetch_multiplier=4)
    try:
        assert [r.get(timeout=10) for r in results] == [0, 1, 2, 3]
    finally:
        for w in first + second:
            w.stop()
    assert len(set(ran_by)) == 1
