"""Events in the SQLite file: a table that publishers append to and subscribers read by id.

A subscriber starts after the newest row when it subscribes and reads forward by id, waiting
on the file's change counter (``PRAGMA data_version``) between reads. Each event is one row (a
``task.multi`` batch is one transaction of several rows), with the routing key its message
would travel under elsewhere.
Rows older than ``retention`` seconds are deleted by the publishers, at most once every
:data:`TRIM_EVERY` seconds each, so the table stays small without a delete per insert.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence

from celeriac.events.channel import Event, EventChannel, Subscription, unpack, wire_form
from celeriac.transports.sqlite.connection import SQLiteFile, wait_for_change

SCHEMA = """
CREATE TABLE IF NOT EXISTS celeriac_events (
    id INTEGER PRIMARY KEY AUTOINCREMENT,  -- never reused: subscribers read past an id
    routing_key TEXT NOT NULL,
    created REAL NOT NULL,
    body TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS celeriac_events_created ON celeriac_events (created);
"""

#: s between two trims by one publisher (and at most a tenth of the retention)
TRIM_EVERY = 60.0
#: s between looks at the change counter while a subscriber waits
POLL = 0.05
_READ_LIMIT = 1000
_TRIM = "DELETE FROM celeriac_events WHERE created < ?"


class SQLiteSubscription(Subscription):
    def __init__(self, db: SQLiteFile, patterns: Sequence[str]) -> None:
        super().__init__(patterns)
        self._db = db
        [(last,)] = db.read("SELECT COALESCE(MAX(id), 0) FROM celeriac_events")
        self._after = int(last)
        self._version = db.data_version()

    def _read(self) -> list[Event]:
        rows = self._db.read(
            "SELECT id, routing_key, body FROM celeriac_events WHERE id > ? ORDER BY id LIMIT ?",
            (self._after, _READ_LIMIT),
        )
        out: list[Event] = []
        for row_id, key, body in rows:
            self._after = int(row_id)
            if self.wanted(key):
                out.extend(unpack(json.loads(body)))
        return out

    def receive(self, timeout: float) -> list[Event]:
        until = time.time() + max(0.0, timeout)
        while True:
            out = self._read()
            if out or time.time() >= until:
                return out
            self._version = wait_for_change(self._db, self._version, until, POLL)

    def close(self) -> None:
        pass  # the connection is the channel's


class SQLiteEventChannel(EventChannel):
    def __init__(self, db: SQLiteFile, retention: float) -> None:
        super().__init__()
        self.db = db
        self.retention = retention
        self._trimmed = 0.0

    def publish(self, events: Sequence[Event], *, grouped: bool = False) -> None:
        now = time.time()
        key, _ = wire_form(events, grouped)  # each row keeps the key its message would have
        rows = [(key, now, json.dumps(e)) for e in events]
        trim = now - self._trimmed >= min(TRIM_EVERY, self.retention / 10)
        with self.db.write() as conn:
            conn.executemany(
                "INSERT INTO celeriac_events (routing_key, created, body) VALUES (?, ?, ?)", rows
            )
            if trim:
                conn.execute(_TRIM, (now - self.retention,))
        if trim:
            self._trimmed = now

    def trim(self) -> int:
        """Delete the events older than the retention now; how many there were."""
        with self.db.write() as conn:
            cur = conn.execute(_TRIM, (time.time() - self.retention,))
        self._trimmed = time.time()
        return int(cur.rowcount)

    def subscribe(self, patterns: Sequence[str] = ("#",)) -> Subscription:
        return SQLiteSubscription(self.db, patterns)

    def _close(self) -> None:
        self.db.close()
