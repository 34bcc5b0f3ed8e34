"""Settling outcomes: a failure that retrying cannot mend does not wedge the worker."""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator, Sequence

import pytest

from celeriac import Celeriac
from celeriac.backends.base import EncodedResult
from celeriac.exceptions import BackendError
from celeriac.protocol.message import build_task_message
from celeriac.protocol.publication import Publication, Route
from celeriac.protocol.serializers import default_registry
from celeriac.transports.base import Combined
from celeriac.worker import Worker, settler
from celeriac.worker.inflight import InFlight


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


def test_results_a_failed_combined_fetch_carried_are_stored_before_their_acks(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """When the fetch carrying them fails, results and acks go on their own; if the results
    cannot be stored before the worker stops, their messages stay leased, not acknowledged."""
    app = Celeriac("send", broker_url="memory://")
    broker, backend = app.broker, app.backend
    message = build_task_message(default_registry, task_name="t", task_id="t-1", args=())
    broker.publish(Publication(message, Route("q")))
    [delivery] = broker.fetch(["q"], 1, timeout=0)

    def full(items: Sequence[EncodedResult]) -> None:
        raise BackendError("database or disk is full")

    monkeypatch.setattr(backend, "store_encoded", full)
    monkeypatch.setattr(settler, "_RETRY_PAUSE", 0.0)
    stopping = threading.Event()  # cleared: the worker stops, failures are given up
    settling = settler.Settler(
        app,
        Combined(broker, backend),
        InFlight(1),
        hostname="h",
        running=stopping,
        on_settled=lambda ids: None,
    )
    later = settler.Deferred([delivery], [EncodedResult("t-1", "SUCCESS", b"{}")])
    with caplog.at_level(logging.ERROR, logger="celeriac.worker"):
        settling.send(later)
    assert broker.depth("q") == 1  # still leased: delivered again when its lease ends
    assert "left 1 message(s) leased" in caplog.text
    app.close()
