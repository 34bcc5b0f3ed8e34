"""The SQLite combined path: a batch settled and the next leased in one transaction, and a
writer that waits for another process's transaction without sleeping whole milliseconds."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import closing
from pathlib import Path

import pytest

from celeriac.backends.base import EncodedResult
from celeriac.exceptions import BrokerError
from celeriac.protocol.message import Message, build_task_message
from celeriac.protocol.publication import Publication, Route
from celeriac.protocol.serializers import default_registry
from celeriac.transports import open_transport
from celeriac.transports.base import Transport
from celeriac.transports.sqlite import connection
from celeriac.transports.sqlite.combined import SQLiteCombined


def msg(task_id: str) -> Message:
    return build_task_message(default_registry, task_name="t", task_id=task_id, args=(task_id,))


def result(task_id: str) -> EncodedResult:
    meta = {"task_id": task_id, "status": "SUCCESS", "result": 1}
    return EncodedResult(task_id, "SUCCESS", json.dumps(meta).encode())


@pytest.fixture
def path(tmp_path: Path) -> Path:
    return tmp_path / "c.db"


@pytest.fixture
def transport(path: Path) -> Iterator[Transport]:
    opened = open_transport(f"sqlite:///{path}")
    yield opened
    opened.close()


def test_one_file_gives_the_combined_path_and_two_files_do_not(
    transport: Transport, tmp_path: Path
) -> None:
    broker = transport.broker()
    combined = transport.combine(broker, transport.backend(transport.url))
    assert isinstance(combined, SQLiteCombined) and combined.carries_results
    elsewhere = open_transport(f"sqlite:///{tmp_path}/other.db")
    try:
        apart = transport.combine(broker, elsewhere.backend(elsewhere.url))
        assert type(apart) is not SQLiteCombined and not apart.carries_results
    finally:
        elsewhere.close()


def test_a_settled_task_and_the_next_fetch_take_one_transaction(transport: Transport) -> None:
    broker = transport.broker()
    combined = transport.combine(broker, transport.backend(transport.url))
    for task_id in ("a", "b"):
        broker.publish(Publication(msg(task_id), Route("q")))
    [first] = combined.fetch(["q"], 1, timeout=0)
    statements: list[str] = []
    conn = broker.db.connection()  # this thread's: the one the combined path writes on
    conn.set_trace_callback(statements.append)
    try:
        [second] = combined.store_ack_fetch([result("a")], [first], ["q"], 1, timeout=0)
    finally:
        conn.set_trace_callback(None)
    assert second.message.task_id == "b" and second.stored_state == ""
    assert statements.count("BEGIN IMMEDIATE") == 1
    assert statements.count("COMMIT") == 1
    assert not any(s.startswith("PRAGMA data_version") for s in statements)


def test_a_failed_claim_stores_nothing_and_acks_nothing(transport: Transport, path: Path) -> None:
    broker = transport.broker()
    backend = transport.backend(transport.url)
    combined = transport.combine(broker, backend)
    for task_id in ("a", "b"):
        broker.publish(Publication(msg(task_id), Route("q")))
    [first] = combined.fetch(["q"], 1, timeout=0)
    with closing(sqlite3.connect(path)) as db:  # the claim of b fails inside the transaction
        db.execute(
            "CREATE TRIGGER refuse BEFORE UPDATE OF state ON celeriac_messages"
            " WHEN NEW.state = 2 BEGIN SELECT RAISE(ABORT, 'refused'); END"
        )
        db.commit()
    with pytest.raises(BrokerError, match="refused"):
        combined.store_ack_fetch([result("a")], [first], ["q"], 1, timeout=0)
    assert backend.get_states(["a"]) == {}  # rolled back as a whole: no result,
    assert broker.depth("q") == 2  # and a still held
    # What the worker does then (Settler.send): store, then ack, on their own.
    combined.store_ack_fetch([result("a")], [first], ["q"], 0, timeout=0)
    assert backend.get_states(["a"]) == {"a": "SUCCESS"}
    assert broker.depth("q") == 1


HOLD = """
import sqlite3, sys, time
conn = sqlite3.connect(sys.argv[1], isolation_level=None)
conn.execute("BEGIN IMMEDIATE")
print("locked", flush=True)
time.sleep(float(sys.argv[2]))
conn.execute("COMMIT")
time.sleep(60)
"""


def _hold(path: Path, seconds: float) -> subprocess.Popen[bytes]:
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD, str(path), str(seconds)], stdout=subprocess.PIPE
    )
    assert holder.stdout is not None and holder.stdout.readline() == b"locked\n"
    return holder


def test_a_writer_waits_for_another_process_and_goes_on_as_it_commits(
    transport: Transport, path: Path
) -> None:
    broker = transport.broker()
    broker.publish(Publication(msg("a"), Route("q")))  # the file and its tables
    holder = _hold(path, 0.3)
    try:
        started = time.monotonic()
        broker.publish(Publication(msg("b"), Route("q")))
        took = time.monotonic() - started
    finally:
        holder.kill()
        holder.wait()
    assert broker.depth("q") == 2
    assert 0.2 <= took < 0.3 + 0.1, took  # steps of at most 2 ms, not SQLite's 100 ms


def test_a_writer_waits_no_longer_than_the_busy_timeout(
    transport: Transport, path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    broker = transport.broker()
    broker.publish(Publication(msg("a"), Route("q")))
    monkeypatch.setattr(connection, "BUSY_TIMEOUT_MS", 300)
    holder = _hold(path, 30)
    try:
        started = time.monotonic()
        with pytest.raises(BrokerError, match="locked"):
            broker.publish(Publication(msg("b"), Route("q")))
        took = time.monotonic() - started
    finally:
        holder.kill()
        holder.wait()
    assert 0.3 <= took < 0.3 + 0.2, took
    broker.publish(Publication(msg("b"), Route("q")))  # free again, and the timeout restored
    assert broker.depth("q") == 2
