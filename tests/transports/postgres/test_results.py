"""PostgreSQL results: stored with the ack in one transaction, read by the claim, expired
without beat, chords counted once under concurrency, ``db+postgresql://`` accepted."""

from __future__ import annotations

import threading
import time
from typing import Any

import psycopg
import pytest

from celeriac.backends import ChordPart, EncodedResult, create_backend
from celeriac.exceptions import BrokerError
from celeriac.protocol.message import build_task_message
from celeriac.protocol.publication import Publication, Route
from celeriac.protocol.serializers import default_registry
from celeriac.transports import open_transport
from celeriac.transports.postgres.connection import parse_url
from celeriac.transports.postgres.transport import PostgresCombined

pytestmark = pytest.mark.postgres


def msg(task_id: str) -> Any:
    return build_task_message(default_registry, task_name="t", task_id=task_id, args=())


def result(task_id: str) -> EncodedResult:
    doc = b'{"task_id": "%s", "status": "SUCCESS", "result": 1}' % task_id.encode()
    return EncodedResult(task_id, "SUCCESS", doc)


def test_the_claim_reads_stored_states_and_a_failed_ack_stores_no_result(url: str) -> None:
    transport = open_transport(url)
    broker, backend = transport.broker(), transport.backend(url)
    try:
        combined = transport.combine(broker, backend)
        assert isinstance(combined, PostgresCombined)
        for task_id in ("done", "new"):
            broker.publish(Publication(msg(task_id), Route("q")))
        backend.store_encoded([result("done")])
        got = combined.fetch(["q"], 10, timeout=1)
        assert {d.message.task_id: d.stored_state for d in got} == {"done": "SUCCESS", "new": ""}
        # The ack fails inside the transaction: the result must not be stored either.
        real = broker.delete

        def failing(cur: psycopg.Cursor[Any], deliveries: Any) -> None:
            cur.execute("SELECT 1/0")

        broker.delete = failing  # type: ignore[method-assign]
        with pytest.raises(BrokerError, match="division by zero"):
            combined.store_ack_fetch([result("new")], got, ["q"], 1, timeout=0)
        assert backend.get_states(["new"]) == {}
        assert broker.depth("q") == 2
        broker.delete = real  # type: ignore[method-assign]
        assert combined.store_ack_fetch([result("new")], got, ["q"], 1, timeout=0) == []
        assert backend.get_states(["done", "new"]) == {"done": "SUCCESS", "new": "SUCCESS"}
        assert broker.depth("q") == 0
    finally:
        transport.close()


def test_expired_results_are_deleted_by_writers_without_beat(url: str) -> None:
    backend = create_backend(url, expires=0.05)
    try:
        backend.store_encoded([result("old")])
        time.sleep(0.1)  # let "old" expire (wall-clock time is what is tested)
        backend._last_sweep = 0.0  # type: ignore[attr-defined]  # the minute has passed
        backend.store_encoded([result("new")])
        conninfo, schema = parse_url(url)
        with psycopg.connect(conninfo) as conn:
            rows = conn.execute(f'SELECT task_id FROM "{schema}".results').fetchall()
        assert rows == [("new",)]
    finally:
        backend.close()


def test_a_chord_is_claimed_once_when_its_parts_finish_together(url: str) -> None:
    backend = create_backend(url)
    size = 12
    backend.chord_start("g", size)
    claims: list[list[str]] = []
    go = threading.Barrier(size)

    def finish(i: int) -> None:
        go.wait(5)
        part = ChordPart("g", i, f"t{i}", "SUCCESS", b"{}", size)
        claims.append(backend.chord_record([part]))

    threads = [threading.Thread(target=finish, args=(i,)) for i in range(size)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    try:
        assert sorted(claims) == [[]] * (size - 1) + [["g"]]
        assert [r.task_id for r in backend.chord_results("g")] == [f"t{i}" for i in range(size)]
    finally:
        backend.close()


def test_db_postgresql_and_postgres_are_spellings_of_the_same_store(url: str) -> None:
    backend = create_backend("db+" + url)
    short = create_backend(url.replace("postgresql://", "postgres://", 1))
    try:
        backend.store_result("x", 3, "SUCCESS")
        assert short.get_meta("x")["result"] == 3
    finally:
        backend.close()
        short.close()


def test_rate_limit_slots_are_shared_between_brokers(url: str) -> None:
    a, b = open_transport(url).broker(), open_transport(url).broker()
    try:
        slots = [broker.reserve_rate_slot("k", 10.0) for broker in (a, b, a)]
        assert slots[1] - slots[0] == pytest.approx(10.0, abs=0.5)
        assert slots[2] - slots[1] == pytest.approx(10.0, abs=0.01)
    finally:
        a.close()
        b.close()
