"""Eager mode runs through the worker's own parts, so it behaves as a worker does."""

from __future__ import annotations

import datetime as dt
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest

from celeriac import Celeriac, chain, chord, group
from celeriac.result import AsyncResult
from celeriac.worker import Worker


def make_app(**settings: Any) -> Celeriac:
    app = Celeriac("eager_tests", **{"broker_url": "memory://", **settings})

    @app.task(name="pair")
    def pair(x: int) -> tuple[int, int]:
        return (x, x)

    @app.task(name="opaque")
    def opaque() -> object:
        return object()

    @app.task(name="add")
    def add(x: int, y: int) -> int:
        return x + y

    @app.task(name="tsum")
    def tsum(values: list[int]) -> int:
        return sum(values)

    return app


@pytest.fixture
def worker_app() -> Iterator[Celeriac]:
    """The same tasks, run by a real (in-process) worker."""
    app = make_app()
    worker = Worker(app, pool="threads", concurrency=2, install_signal_handlers=False)
    thread = threading.Thread(target=worker.start, daemon=True)
    thread.start()
    assert worker.ready.wait(10)
    try:
        yield app
    finally:
        worker.stop()
        thread.join(10)
        app.close()


@pytest.fixture
def eager_app() -> Iterator[Celeriac]:
    app = make_app(task_always_eager=True)
    yield app
    app.close()


def outcome(result: AsyncResult[Any]) -> tuple[str, Any]:
    result.get(timeout=10, propagate=False)
    value = result.result
    if isinstance(value, BaseException):
        value = (type(value).__name__, str(value))
    return result.state, value


def test_results_come_back_serialized_as_from_a_worker(
    eager_app: Celeriac, worker_app: Celeriac
) -> None:
    eager = outcome(eager_app.tasks["pair"].delay(3))
    real = outcome(worker_app.tasks["pair"].delay(3))
    assert eager == real == ("SUCCESS", [3, 3])  # a tuple travels as a JSON list


def test_a_result_the_serializer_refuses_fails_as_on_a_worker(
    eager_app: Celeriac, worker_app: Celeriac
) -> None:
    eager = outcome(eager_app.tasks["opaque"].delay())
    real = outcome(worker_app.tasks["opaque"].delay())
    assert eager[0] == real[0] == "FAILURE"
    assert eager[1][0] == real[1][0]


def test_an_argument_the_serializer_refuses_is_refused_at_send(
    eager_app: Celeriac, worker_app: Celeriac
) -> None:
    errors = []
    for app in (eager_app, worker_app):
        with pytest.raises(Exception) as err:
            app.tasks["add"].delay(object(), 1)
        errors.append(type(err.value))
    assert errors[0] is errors[1]


def test_an_expired_task_is_revoked_not_run(eager_app: Celeriac, worker_app: Celeriac) -> None:
    past = dt.datetime.now(dt.timezone.utc) - dt.timedelta(seconds=10)
    for app in (eager_app, worker_app):
        result = app.tasks["add"].apply_async((1, 2), expires=past)
        assert outcome(result) == ("REVOKED", ("TaskRevokedError", "expired"))


def test_workflows_give_what_a_worker_gives(eager_app: Celeriac, worker_app: Celeriac) -> None:
    def run(app: Celeriac) -> list[Any]:
        add, tsum = app.tasks["add"], app.tasks["tsum"]
        flow = chain(add.s(1, 2), add.s(10), add.s(100)).apply_async()
        members = group(add.s(i, i) for i in range(5)).apply_async()
        summed = chord([add.s(i, 1) for i in range(4)], tsum.s()).apply_async()
        return [flow.get(timeout=10), members.get(timeout=10), summed.get(timeout=10)]

    assert run(eager_app) == run(worker_app) == [113, [0, 2, 4, 6, 8], 10]


def test_countdowns_and_retries_are_not_waited_for() -> None:
    app = make_app(task_always_eager=True)
    seen: list[int] = []

    @app.task(bind=True, max_retries=3, default_retry_delay=60)
    def slow(self: Any) -> int:
        seen.append(self.request.retries)
        if len(seen) < 3:
            raise self.retry()
        return len(seen)

    started = time.monotonic()
    assert slow.apply_async(countdown=60).get() == 3
    assert time.monotonic() - started < 5
    assert seen == [0, 1, 2]


def test_an_rpc_app_runs_eagerly_without_reaching_rabbitmq() -> None:
    # Nothing listens on port 1: any connection attempt would fail or hang.
    app = make_app(
        broker_url="amqp://guest:guest@127.0.0.1:1//",
        result_backend="rpc://",
        task_always_eager=True,
    )

    def io_threads() -> int:
        return sum(t.name == "celeriac-amqp-io" for t in threading.enumerate())

    before = io_threads()
    try:
        assert app.tasks["add"].delay(2, 3).get() == 5
        assert app.tasks["add"].s(2, 3).apply().get() == 5
        assert io_threads() == before  # no AMQP link was even made
    finally:
        app.close()
