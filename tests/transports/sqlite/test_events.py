"""SQLite's event table: trimmed by age, by publishers, not on every insert."""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path

from celeriac.transports import EventConfig
from celeriac.transports.sqlite.events import SQLiteEventChannel
from celeriac.transports.sqlite.transport import SQLiteTransport


def _count(path: Path) -> int:
    with sqlite3.connect(path) as conn:
        return int(conn.execute("SELECT COUNT(*) FROM celeriac_events").fetchone()[0])


def _age_all(path: Path, seconds: float) -> None:
    with sqlite3.connect(path) as conn:
        conn.execute("UPDATE celeriac_events SET created = created - ?", (seconds,))


def test_old_events_are_trimmed_by_age(tmp_path: Path) -> None:
    path = tmp_path / "e.db"
    transport = SQLiteTransport(f"sqlite:///{path}")
    channel = transport.events(EventConfig(retention=3600.0))
    assert isinstance(channel, SQLiteEventChannel)
    event = {"type": "worker-heartbeat", "hostname": "n@h"}
    channel.publish([event])  # the first publish trims (nothing to trim yet)
    _age_all(path, 7200)  # that row is now two hours old
    channel.publish([event, {**event, "type": "worker-online"}][:1])
    assert _count(path) == 2  # a trim ran a moment ago: inserts do not trim each time
    assert channel.trim() == 1  # the two-hour-old row goes, the new one stays
    assert _count(path) == 1
    # Once a trim is due again, the next publish does it in its own transaction.
    _age_all(path, 7200)
    channel._trimmed = time.time() - 61
    channel.publish([event])
    assert _count(path) == 1
    transport.close()


def test_a_subscriber_reads_past_trimmed_ids(tmp_path: Path) -> None:
    transport = SQLiteTransport(f"sqlite:///{tmp_path / 'e.db'}")
    channel = transport.events(EventConfig(retention=0.0))
    sub = channel.subscribe(["#"])
    channel.publish([{"type": "worker-online", "n": 1}])
    channel.trim()  # everything older than now: the table is empty
    channel.publish([{"type": "worker-online", "n": 2}])
    assert [e["n"] for e in sub.receive(1.0)] == [2]  # ids are never reused
    transport.close()
