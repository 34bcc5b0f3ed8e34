"""The combined path (``Transport.combine``) as a worker's consumer uses it, over every transport
that stores results: results stored before their messages are acknowledged, the next batch
leased, and each fetched task's stored state where the transport reads it along."""

from __future__ import annotations

import json
import time
import uuid
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
from tests import amqp_support, redis_support
from tests.amqp_support import amqp_vhost  # noqa: F401 - a fixture

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
def apart(amqp_vhost: str) -> Iterator[Parts]:  # noqa: F811 - the fixture imported above
    """RabbitMQ (a broker that sends ahead) with a Redis result backend: two transports, so
    the worker combines them apart."""
    prefix = redis_support.new_prefix()
    amqp = open_transport(amqp_support.url_for(amqp_vhost))
    redis_url = redis_support.url_with_prefix(prefix)
    redis_transport = open_transport(redis_url)
    try:
        broker, backend = amqp.broker(), redis_transport.backend(redis_url)
        yield combine_apart(broker, backend), broker, backend
    finally:
        amqp.close()
        redis_transport.close()
        redis_support.drop(prefix)


@pytest.fixture
def queue(amqp_vhost: str) -> Iterator[str]:  # noqa: F811
    name = f"q-{uuid.uuid4().hex[:8]}"
    yield name
    amqp_support.delete_queues(amqp_support.url_for(amqp_vhost), [name])


def test_a_backend_that_cannot_store_and_read_at_once_keeps_three_calls(tmp_path: Path) -> None:
    memory, sqlite = open_transport("memory://"), open_transport(f"sqlite:///{tmp_path}/r.db")
    try:
        combined = combine_apart(memory.broker(), sqlite.backend(f"sqlite:///{tmp_path}/r.db"))
        assert type(combined) is Combined and not combined.carries_results
    finally:
        memory.close()
        sqlite.close()


def _take(combined: Combined, queue: str, n: int) -> list[Delivery]:
    got: list[Delivery] = []
    deadline = time.monotonic() + 10
    while len(got) < n and time.monotonic() < deadline:
        got += combined.fetch([queue], n - len(got), timeout=1)
    assert len(got) == n
    return got


def _arrived(broker: Broker, count: int) -> None:
    """Wait until RabbitMQ sent ``count`` deliveries to this consumer in all."""
    inbox = broker.inbox  # type: ignore[attr-defined]
    deadline = time.monotonic() + 10
    while inbox.arrivals < count and time.monotonic() < deadline:
        time.sleep(0.01)
    assert inbox.arrivals == count


def _publish(broker: Broker, queue: str, task_ids: str) -> None:
    for task_id in task_ids:
        broker.publish(Publication(msg(task_id), Route(queue)))


@pytest.mark.redis
@pytest.mark.amqp
def test_results_ride_on_the_lookup_of_what_rabbitmq_sent_ahead(
    apart: Parts, queue: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    combined, broker, backend = apart
    assert isinstance(combined, LookupCarriesResults) and combined.carries_results
    _publish(broker, queue, "abcdef")
    backend.store_result("f", 6, "SUCCESS")  # f ran before: the look-up must say so
    a, b, c, d = _take(combined, queue, 4)  # a window of 4: RabbitMQ holds e and f back
    # a and b settled while c and d still wait (nothing leased): RabbitMQ sends e and f.
    settled = combined.store_ack_fetch(
        [result("a", "x"), result("b", "x")], [a, b], [queue], 0, timeout=0
    )
    assert settled == []
    _arrived(broker, 6)
    calls: list[str] = []
    run = backend._run  # type: ignore[attr-defined]

    def counted(command: str, *args: object) -> object:
        calls.append(command)
        return run(command, *args)

    monkeypatch.setattr(backend, "_run", counted)
    monkeypatch.setattr(backend, "get_states", _never)
    monkeypatch.setattr(backend, "store_encoded", _never)

    got = combined.store_ack_fetch(
        [result("c", "x"), result("d", "x")], [c, d], [queue], 2, timeout=5
    )

    assert calls == ["store_read"]  # c and d stored, e and f looked up: one round trip
    assert {x.message.task_id: x.stored_state for x in got} == {"e": "", "f": "SUCCESS"}
    monkeypatch.undo()
    assert [backend.get_meta(t)["status"] for t in "abcd"] == ["SUCCESS"] * 4
    assert combined.store_ack_fetch([], got, [queue], 0, timeout=0) == []
    assert broker.depth(queue) == 0  # a to f acknowledged, nothing held back or lost


@pytest.mark.redis
@pytest.mark.amqp
def test_a_failed_store_gives_what_was_taken_back_and_acks_nothing(
    apart: Parts, queue: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    combined, broker, backend = apart
    _publish(broker, queue, "abcdef")
    a, b, c, d = _take(combined, queue, 4)
    combined.store_ack_fetch([result("a", "x"), result("b", "x")], [a, b], [queue], 0, timeout=0)
    _arrived(broker, 6)

    def down(*args: object) -> None:
        raise BackendError("Redis result backend: store_read failed: connection refused")

    monkeypatch.setattr(backend, "_run", down)
    with pytest.raises(BackendError, match="store_read failed"):
        combined.store_ack_fetch(
            [result("c", "x"), result("d", "x")], [c, d], [queue], 2, timeout=5
        )
    monkeypatch.undo()

    assert backend.get_meta("c")["status"] == "PENDING"
    # c and d still held (not acked); e and f given back as never worked on
    assert broker.depth(queue) == 4
    again = _take(combined, queue, 2)
    assert [(x.message.task_id, x.delivery_count) for x in again] == [("e", 1), ("f", 1)]
    combined.store_ack_fetch([], [c, d, *again], [queue], 0, timeout=0)
    assert broker.depth(queue) == 0


@pytest.mark.redis
def test_with_nothing_arrived_results_are_stored_before_the_wait(tmp_path: Path) -> None:
    prefix = redis_support.new_prefix()
    memory = open_transport("memory://")
    redis_url = redis_support.url_with_prefix(prefix)
    redis_transport = open_transport(redis_url)
    try:
        broker, backend = memory.broker(), redis_transport.backend(redis_url)
        combined = combine_apart(broker, backend)
        broker.publish(Publication(msg("a"), Route("q")))
        first = combined.fetch(["q"], 1, timeout=0)
        waits: list[tuple[float, str]] = []
        fetch = broker.fetch

        def watched(queues: list[str], limit: int, *, timeout: float) -> list[Delivery]:
            waits.append((timeout, backend.get_meta("a")["status"]))
            return fetch(queues, limit, timeout=timeout)

        broker.fetch = watched  # type: ignore[method-assign]
        assert combined.store_ack_fetch([result("a", "x")], first, ["q"], 1, timeout=0.2) == []
        assert waits == [(0.2, "SUCCESS")]  # the wait began with the result stored
        assert broker.depth("q") == 0  # and acknowledged
    finally:
        memory.close()
        redis_transport.close()
        redis_support.drop(prefix)


def _never(*args: object) -> None:
    raise AssertionError("a second round trip to the result backend")
