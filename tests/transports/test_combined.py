"""The combined path (``Transport.combine``) as a worker's consumer uses it, over every transport
that stores results: results stored before their messages are acknowledged, the next batch
leased, and each fetched task's stored state where the transport reads it along."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from celeriac.backends.base import EncodedResult, ResultBackend
from celeriac.brokers.base import Broker, Delivery
from celeriac.exceptions import BackendError
from celeriac.protocol.message import Message, build_task_message
from celeriac.protocol.publication import Publication, Route
from celeriac.protocol.serializers import default_registry
from celeriac.transports import open_transport
from celeriac.transports.base import Combined, LookupCarriesResults, combine_apart
from tests import redis_support

Parts = tuple[Combined, Broker, ResultBackend]


@pytest.fixture(
    params=["memory", "sqlite", pytest.param("redis", marks=pytest.mark.redis)],
)
def parts(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Parts]:
    if request.param == "memory":
        url = "memory://"
    elif request.param == "sqlite":
        url = f"sqlite:///{tmp_path}/c.db"
    else:
        url = redis_support.url_with_prefix(prefix := redis_support.new_prefix())
        request.addfinalizer(lambda: redis_support.drop(prefix))
    transport = open_transport(url)
    broker = transport.broker()
    backend = transport.backend(url)
    try:
        yield transport.combine(broker, backend), broker, backend
    finally:
        transport.close()


def msg(task_id: str) -> Message:
    return build_task_message(default_registry, task_name="t", task_id=task_id, args=(task_id,))


def result(task_id: str, value: str) -> EncodedResult:
    meta = {"task_id": task_id, "status": "SUCCESS", "result": value}
    return EncodedResult(task_id, "SUCCESS", json.dumps(meta).encode())


def ids(deliveries: list[Delivery]) -> list[str | None]:
    return [d.message.task_id for d in deliveries]


def test_results_are_stored_and_messages_acked_as_the_next_is_leased(parts: Parts) -> None:
    combined, broker, backend = parts
    for task_id in ("a", "b", "c"):
        broker.publish(Publication(msg(task_id), Route("q")))
    first = combined.fetch(["q"], 2, timeout=0)
    assert ids(first) == ["a", "b"]
    backend.store_result("b", "earlier", "SUCCESS")  # a SUCCESS is final: not replaced

    third = combined.store_ack_fetch(
        [result("a", "ran"), result("b", "again")], first, ["q"], 2, timeout=1
    )

    assert ids(third) == ["c"]
    assert backend.get_meta("a")["result"] == "ran"
    assert backend.get_meta("b")["result"] == "earlier"
    assert broker.depth("q") == 1  # a and b acknowledged, c leased
    # No room to fetch, nothing ready: the result and the ack still go.
    assert combined.store_ack_fetch([result("c", "x")], third, ["q"], 0, timeout=0) == []
    assert combined.store_ack_fetch([], [], ["q"], 1, timeout=0) == []
    assert backend.get_meta("c")["result"] == "x"
    assert broker.depth("q") == 0


def test_fetched_tasks_carry_their_stored_state_where_the_transport_reads_it(
    parts: Parts,
) -> None:
    combined, broker, backend = parts
    for task_id in ("done", "gone", "new", "next"):
        broker.publish(Publication(msg(task_id), Route("q")))
    backend.store_result("done", 1, "SUCCESS")
    backend.store_result("gone", None, "REVOKED")
    backend.store_result("next", 2, "SUCCESS")

    got = combined.fetch(["q"], 3, timeout=0)
    more = combined.store_ack_fetch([], got[:1], ["q"], 1, timeout=0)

    found = {d.message.task_id: d.stored_state for d in got + more}
    if combined.carries_results:
        assert found == {"done": "SUCCESS", "gone": "REVOKED", "new": "", "next": "SUCCESS"}
    else:  # the worker looks them up itself
        assert found == dict.fromkeys(["done", "gone", "new", "next"])


# -- a broker and a backend on separate servers ---------------------------------------------------
@pytest.fixture
def apart(tmp_path: Path) -> Iterator[tuple[Combined, Broker, ResultBackend]]:
    """The memory broker (a fetch that is no round trip, as RabbitMQ's pushed messages) with
    a real Redis result backend: two transports, so the worker combines them apart."""
    prefix = redis_support.new_prefix()
    memory, redis_transport = open_transport("memory://"), None
    try:
        url = redis_support.url_with_prefix(prefix)
        redis_transport = open_transport(url)
        broker, backend = memory.broker(), redis_transport.backend(url)
        yield combine_apart(broker, backend), broker, backend
    finally:
        memory.close()
        if redis_transport is not None:
            redis_transport.close()
        redis_support.drop(prefix)


def test_a_backend_that_cannot_store_and_read_at_once_keeps_three_calls(tmp_path: Path) -> None:
    memory, sqlite = open_transport("memory://"), open_transport(f"sqlite:///{tmp_path}/r.db")
    try:
        combined = combine_apart(memory.broker(), sqlite.backend(f"sqlite:///{tmp_path}/r.db"))
        assert type(combined) is Combined and not combined.carries_results
    finally:
        memory.close()
        sqlite.close()


@pytest.mark.redis
def test_results_ride_on_the_lookup_of_the_next_batch(
    apart: Parts, monkeypatch: pytest.MonkeyPatch
) -> None:
    combined, broker, backend = apart
    assert isinstance(combined, LookupCarriesResults) and combined.carries_results
    for task_id in ("a", "b", "c", "d"):
        broker.publish(Publication(msg(task_id), Route("q")))
    backend.store_result("d", 4, "SUCCESS")  # d ran before: the lookup must say so
    first = combined.fetch(["q"], 2, timeout=0)
    calls: list[str] = []
    run = backend._run  # type: ignore[attr-defined]

    def counted(command: str, *args: object) -> object:
        calls.append(command)
        return run(command, *args)

    monkeypatch.setattr(backend, "_run", counted)
    monkeypatch.setattr(backend, "get_states", _never)
    monkeypatch.setattr(backend, "store_encoded", _never)

    got = combined.store_ack_fetch(
        [result("a", "ran a"), result("b", "ran b")], first, ["q"], 2, timeout=5
    )

    assert calls == ["store_read"]  # stored and looked up in one round trip
    assert {d.message.task_id: d.stored_state for d in got} == {"c": "", "d": "SUCCESS"}
    monkeypatch.undo()
    assert backend.get_meta("a")["result"] == "ran a" and backend.get_meta("b")["result"] == "ran b"
    assert broker.depth("q") == 2  # a and b acknowledged; c and d leased


@pytest.mark.redis
def test_with_nothing_to_fetch_results_are_stored_before_the_wait(apart: Parts) -> None:
    combined, broker, backend = apart
    broker.publish(Publication(msg("a"), Route("q")))
    first = combined.fetch(["q"], 1, timeout=0)
    waits: list[tuple[float, str]] = []
    fetch = broker.fetch

    def watched(queues: list[str], limit: int, *, timeout: float) -> list[Delivery]:
        waits.append((timeout, backend.get_meta("a")["status"]))
        return fetch(queues, limit, timeout=timeout)

    broker.fetch = watched  # type: ignore[method-assign]
    assert combined.store_ack_fetch([result("a", "x")], first, ["q"], 1, timeout=0.2) == []
    # a look at what is there, then the wait: by then the result is stored and the ack sent
    assert waits == [(0.0, "PENDING"), (0.2, "SUCCESS")]
    assert broker.depth("q") == 0


@pytest.mark.redis
def test_a_failed_store_gives_the_fetched_messages_back_and_acks_nothing(
    apart: Parts, monkeypatch: pytest.MonkeyPatch
) -> None:
    combined, broker, backend = apart
    for task_id in ("a", "b", "c"):
        broker.publish(Publication(msg(task_id), Route("q")))
    first = combined.fetch(["q"], 1, timeout=0)

    def down(*args: object) -> None:
        raise BackendError("Redis result backend: store_read failed: connection refused")

    monkeypatch.setattr(backend, "_run", down)
    with pytest.raises(BackendError, match="store_read failed"):
        combined.store_ack_fetch([result("a", "x")], first, ["q"], 2, timeout=5)
    monkeypatch.undo()

    assert broker.ready("q") == 2 and broker.depth("q") == 3  # b, c back; a still leased
    again = combined.fetch(["q"], 2, timeout=0)
    # given back as never worked on: their next delivery is still their first
    assert [(d.message.task_id, d.delivery_count) for d in again] == [("b", 1), ("c", 1)]
    assert backend.get_meta("a")["status"] == "PENDING"


def _never(*args: object) -> None:
    raise AssertionError("a second round trip to the result backend")
