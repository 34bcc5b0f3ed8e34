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
from celeriac.protocol.message import Message, build_task_message
from celeriac.protocol.publication import Publication, Route
from celeriac.protocol.serializers import default_registry
from celeriac.transports import open_transport
from celeriac.transports.base import Combined
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
