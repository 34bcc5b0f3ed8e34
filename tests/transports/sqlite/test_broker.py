"""The SQLite broker on a real file: rows that are not messages, written there the way anyone
with ``sqlite3`` could."""

from __future__ import annotations

import json
import logging
import sqlite3
from collections.abc import Iterator
from contextlib import closing
from pathlib import Path

import pytest

from celeriac.brokers import create_broker
from celeriac.protocol.message import Message, build_task_message
from celeriac.protocol.publication import Publication, Route
from celeriac.protocol.serializers import default_registry
from celeriac.transports.sqlite.broker import SQLiteBroker

GOOD = 51


def msg(task_id: str) -> Message:
    return build_task_message(default_registry, task_name="t", task_id=task_id, args=(task_id,))


@pytest.fixture
def path(tmp_path: Path) -> Path:
    return tmp_path / "b.db"


@pytest.fixture
def broker(path: Path) -> Iterator[SQLiteBroker]:
    b = create_broker(f"sqlite:///{path}")
    assert isinstance(b, SQLiteBroker)
    assert b.depth("q") == 0  # the file and its tables exist from here on
    yield b
    b.close()


def raw(path: Path, sql: str, params: tuple[object, ...] = ()) -> list[tuple[object, ...]]:
    with closing(sqlite3.connect(path)) as conn, conn:
        return conn.execute(sql, params).fetchall()


def insert_row(path: Path, queue: str = "q", **columns: object) -> None:
    """A message row as a person or a tool might have written it: valid unless told otherwise."""
    good = msg("bad")
    row: dict[str, object] = {
        "queue": queue,
        "priority": 0,
        "state": 0,
        "visible_at": 0.0,
        "headers": json.dumps(good.headers),
        "properties": json.dumps(good.properties),
        "content_type": good.content_type,
        "content_encoding": good.content_encoding,
        "body": good.body,
        **columns,
    }
    raw(
        path,
        f"INSERT INTO celeriac_messages ({', '.join(row)}) VALUES ({', '.join('?' * len(row))})",
        tuple(row.values()),
    )


BAD_ROWS: dict[str, dict[str, object]] = {
    "headers are not JSON": {"headers": "{not json"},
    "headers are not a JSON object but list": {"headers": "[1, 2]"},
    "properties are not JSON": {"properties": "\x00"},
    "properties are not a JSON object but int": {"properties": "5"},
    "body is an INTEGER, not a blob": {"body": 5},
    "content_type is a BLOB, not text": {"content_type": b"application/json"},
}


def test_rows_that_are_not_messages_are_dead_lettered_and_the_rest_delivered(
    broker: SQLiteBroker, path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # Good and bad rows interleaved, so every claim of the batch meets bad ones in its midst.
    bad = iter(BAD_ROWS.values())
    for i in range(GOOD):
        broker.publish(Publication(msg(f"good{i}"), Route("q")))
        if i % 8 == 3:
            insert_row(path, **next(bad))
    assert next(bad, None) is None

    with caplog.at_level(logging.ERROR, "celeriac.broker.sqlite"):
        got = broker.fetch(["q"], 100, timeout=0)
    assert [d.message.task_id for d in got] == [f"good{i}" for i in range(GOOD)]
    dead = broker.dead_letters()
    assert len(dead) == len(BAD_ROWS)
    for letter, why in zip(dead, BAD_ROWS, strict=True):
        assert letter.queue == "q"
        assert letter.reason.startswith(f"unreadable message row: {why}"), letter.reason
    assert len([r for r in caplog.records if "dead-lettered message row" in r.message]) == len(
        BAD_ROWS
    )
    broker.ack(got)
    assert raw(path, "SELECT COUNT(*) FROM celeriac_messages") == [(0,)]
    assert raw(path, "SELECT COUNT(*) FROM celeriac_dead_letters") == [(len(BAD_ROWS),)]


def test_a_bad_row_first_in_line_does_not_cost_the_fetch_its_message(
    broker: SQLiteBroker, path: Path
) -> None:
    insert_row(path, headers="{not json")
    insert_row(path, body='[["x"], {}, {}]')  # text in the blob column: still a body
    broker.publish(Publication(msg("good"), Route("q")))
    [first] = broker.fetch(["q"], 1, timeout=0)
    assert first.message.task_id == "bad"
    assert first.message.body == b'[["x"], {}, {}]'
    [second] = broker.fetch(["q"], 1, timeout=0)
    assert second.message.task_id == "good"
    assert [d.reason for d in broker.dead_letters()] == [
        "unreadable message row: headers are not JSON: "
        "Expecting property name enclosed in double quotes: line 1 column 2 (char 1)"
    ]


def test_an_unreadable_row_is_dead_lettered_as_it_was_stored(
    broker: SQLiteBroker, path: Path
) -> None:
    insert_row(path, headers="{not json")
    assert broker.fetch(["q"], 10, timeout=0) == []
    [(headers, body)] = raw(path, "SELECT headers, body FROM celeriac_dead_letters")
    assert (headers, body) == ("{not json", msg("bad").body)
    # Replayed as stored, and dead-lettered again: never dropped, never a loop.
    assert broker.replay_dead_letters() == 1
    assert broker.fetch(["q"], 10, timeout=0) == []
    assert len(broker.dead_letters()) == 1
    assert raw(path, "SELECT COUNT(*) FROM celeriac_messages") == [(0,)]


def test_dead_letters_lists_a_row_it_cannot_read(broker: SQLiteBroker, path: Path) -> None:
    broker.publish(Publication(msg("a"), Route("q")))
    [d] = broker.fetch(["q"], 1, timeout=0)
    broker.dead_letter(d, "boom")
    raw(
        path,
        "INSERT INTO celeriac_dead_letters (queue, reason, failed_at, headers, properties,"
        " content_type, content_encoding, body) VALUES ('q', 'hand-made', 'yesterday',"
        " '{not json', '[]', 'application/json', 'utf-8', 7)",
    )
    first, second = broker.dead_letters()
    assert (first.message.task_id, first.reason) == ("a", "boom")
    assert (second.queue, second.reason, second.failed_at) == ("q", "hand-made", 0.0)
    assert (second.message.headers, second.message.properties, second.message.body) == (
        {},
        {},
        b"",
    )
    assert second.message.content_type == "application/json"


def test_a_priority_stored_as_text_does_not_stop_the_claim(
    broker: SQLiteBroker, path: Path
) -> None:
    insert_row(path, priority="high")
    broker.publish(Publication(msg("good"), Route("q"), priority=5))
    got = broker.fetch(["q"], 10, timeout=0)
    assert [d.message.task_id for d in got] == ["good", "bad"]


def test_an_idle_consumer_looks_briskly_just_after_work_then_at_the_polling_interval(
    broker: SQLiteBroker, monkeypatch: pytest.MonkeyPatch
) -> None:
    from celeriac.transports.sqlite import broker as module

    pauses: list[float] = []
    monkeypatch.setattr(module.time, "sleep", pauses.append)  # each look's pause, not slept
    assert broker.fetch(["q"], 1, timeout=0.05) == []  # never busy: the polling interval
    assert pauses[0] == broker.options.polling_interval == 0.005

    broker.publish(Publication(msg("a"), Route("q")))
    assert len(broker.fetch(["q"], 1, timeout=1.0)) == 1
    pauses.clear()
    assert broker.fetch(["q"], 1, timeout=0.05) == []  # found one a moment ago
    assert pauses[0] == module._BRISK_POLL == 0.00025

    broker._found_at -= module._BRISK_FOR  # as if that was a while ago
    pauses.clear()
    assert broker.fetch(["q"], 1, timeout=0.05) == []
    assert pauses[0] == 0.005
