"""The solo pool, in-process over the memory broker: tasks on the worker's own thread, which also
fetches and finishes between them; soft time limits; a warm stop gives back what never started."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest

from celeriac import Celeriac, SoftTimeLimitExceeded
from celeriac.worker import Worker


@pytest.fixture
def app() -> Iterator[Celeriac]:
    app = Celeriac("solo", broker_url="memory://")

    @app.task(name="where")
    def where(i: int) -> list[int]:
        return [i, threading.get_ident()]

    @app.task(name="slow")
    def slow(seconds: float) -> float:
        time.sleep(seconds)
        return seconds

    @app.task(name="limited", soft_time_limit=0.2)
    def limited() -> str:
        try:
            for _ in range(100):
                time.sleep(0.05)
        except SoftTimeLimitExceeded:
            return "cleaned up"
        return "ran to the end"

    yield app


def start(app: Celeriac, **options: Any) -> tuple[Worker, threading.Thread]:
    worker = Worker(app, pool="solo", install_signal_handlers=False, **options)
    thread = threading.Thread(target=worker.start, daemon=True)
    thread.start()
    assert worker.ready.wait(10)
    return worker, thread


def test_tasks_run_on_the_workers_own_thread_in_order(app: Celeriac) -> None:
    worker, thread = start(app)
    try:
        results = [app.tasks["where"].delay(i) for i in range(50)]
        got = [r.get(timeout=10) for r in results]
        assert [i for i, _ in got] == list(range(50))
        assert {ident for _, ident in got} == {thread.ident}
    finally:
        worker.stop()
        thread.join(10)
    assert not thread.is_alive()
    assert worker.consumer.processed == 50


def test_soft_time_limit_is_raised_inside_the_task(app: Celeriac) -> None:
    worker, thread = start(app)
    try:
        assert app.tasks["limited"].delay().get(timeout=10) == "cleaned up"
    finally:
        worker.stop()
        thread.join(10)


def test_warm_stop_finishes_the_running_task_and_gives_back_the_rest(app: Celeriac) -> None:
    # A stopping worker closes the app: the memory broker and backend go with it.
    broker, backend = app.broker, app.backend
    running = app.tasks["slow"].delay(0.5)
    waiting = [app.tasks["slow"].delay(0) for _ in range(3)]
    # Prefetching beyond the free slot (an opt-in): its first fetch takes all four.
    worker, thread = start(app, concurrency=1, prefetch_multiplier=4)
    deadline = time.monotonic() + 5
    while len(worker.consumer.inflight) < 4:  # all four fetched, the first one running
        assert time.monotonic() < deadline
        time.sleep(0.01)
    worker.stop()
    thread.join(10)
    assert backend.get_meta(running.id)["result"] == 0.5  # finished before the stop ended
    assert all(backend.get_meta(r.id)["status"] == "PENDING" for r in waiting)
    assert broker.depth("celery") == 3  # given back, not lost


def test_warm_stop_sends_again_what_was_acked_on_receipt_and_never_started(app: Celeriac) -> None:
    broker, backend = app.broker, app.backend

    @app.task(name="early", acks_late=False)
    def early(seconds: float) -> float:
        time.sleep(seconds)
        return seconds

    running = early.delay(0.5)
    waiting = [early.delay(0) for _ in range(3)]
    worker, thread = start(app, concurrency=1, prefetch_multiplier=4)
    deadline = time.monotonic() + 5
    while len(worker.consumer.inflight) < 4:
        assert time.monotonic() < deadline
        time.sleep(0.01)
    worker.stop()
    thread.join(10)
    assert backend.get_meta(running.id)["result"] == 0.5
    # Their messages were acknowledged when fetched: the broker had no copy left to give back.
    back = broker.fetch(["celery"], 10, timeout=0)
    assert [d.message.task_id for d in back] == [r.id for r in waiting]
    assert [d.delivery_count for d in back] == [1, 1, 1]


def test_outcomes_due_while_jobs_wait_are_settled_in_one_call(
    app: Celeriac, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Results and acks that waited past FLUSH_AFTER behind leased jobs go to the broker in one
    store-ack-fetch call that leases nothing, not as a store and an ack of their own."""
    from celeriac.transports.base import Combined
    from celeriac.worker.settler import FLUSH_AFTER

    calls: list[tuple[int, int]] = []  # (acks, limit) of each combined call
    original = Combined.store_ack_fetch

    def recorded(self: Combined, results: Any, acks: Any, *args: Any, **kw: Any) -> Any:
        calls.append((len(acks), args[1]))
        return original(self, results, acks, *args, **kw)

    monkeypatch.setattr(Combined, "store_ack_fetch", recorded)
    results = [app.tasks["slow"].delay(2 * FLUSH_AFTER) for _ in range(8)]
    worker, thread = start(app, concurrency=1, prefetch_multiplier=4)
    try:
        assert [r.get(timeout=10) for r in results] == [2 * FLUSH_AFTER] * 8
    finally:
        worker.stop()
        thread.join(10)
    assert sum(acks for acks, _ in calls) == 8  # every ack rode on a combined call
    assert any(acks and limit == 0 for acks, limit in calls)  # some while jobs waited
