"""Settling outcomes: a failure that retrying cannot mend does not wedge the worker."""

from __future__ import annotations

import threading
from collections.abc import Iterator

import pytest

from celeriac import Celeriac
from celeriac.worker import Worker


@pytest.fixture(params=["threads", "solo"])
def app(request: pytest.FixtureRequest) -> Iterator[Celeriac]:
    app = Celeriac("settler", broker_url="memory://")

    @app.task(name="first")
    def first() -> str:
        return "ran"

    @app.task(name="later")
    def later(i: int) -> int:
        return i

    worker = Worker(app, pool=request.param, concurrency=1, install_signal_handlers=False)
    thread = threading.Thread(target=worker.start, daemon=True)
    thread.start()
    assert worker.ready.wait(10)
    try:
        yield app
    finally:
        worker.stop()
        thread.join(10)


def test_a_follow_up_with_no_route_fails_its_task_and_the_worker_goes_on(app: Celeriac) -> None:
    broker = app.broker
    nowhere = app.signature("later", (1,), exchange="no-such-exchange", routing_key="x")
    stuck = app.tasks["first"].apply_async(link=nowhere)
    with pytest.raises(Exception, match="what the task sends next cannot be published") as err:
        stuck.get(timeout=10)
    assert type(err.value).__name__ == "ConfigurationError"
    # Later tasks are settled as usual: nothing waits behind the refused one.
    assert [app.tasks["later"].delay(i).get(timeout=10) for i in range(3)] == [0, 1, 2]
    [dead] = broker.dead_letters()
    assert dead.message.task_id == stuck.id
    assert "cannot be published" in dead.reason
    assert broker.depth("celery") == 0
