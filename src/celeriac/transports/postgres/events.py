"""Events in PostgreSQL: a table publishers append to, read by id, with NOTIFY to wake readers.

Publishers insert under a transaction-level advisory lock, so ids commit in the order they were
given and a subscriber reading ``id > last`` never skips a row that commits late. A subscriber
starts after the newest row and waits on ``LISTEN`` between reads. Rows older than
``retention`` seconds are deleted by the publishers, at most once every :data:`TRIM_EVERY`
seconds each.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence

from celeriac.events.channel import Event, EventChannel, Subscription, unpack, wire_form
from celeriac.exceptions import BrokerError
from celeriac.transports.postgres.connection import Database

#: s between two trims by one publisher (and at most a tenth of the retention)
TRIM_EVERY = 60.0
_READ_LIMIT = 1000
_TRIM = "DELETE FROM {s}.events WHERE created < %s"


class PostgresSubscription(Subscription):
    def __init__(self, db: Database, patterns: Sequence[str]) -> None:
        super().__init__(patterns)
        self._db = db
        self._channel = db.channel("ev")
        db.listen((self._channel,), BrokerError)
        with db.cursor(BrokerError, "subscribing to events") as cur:
            [(last,)] = cur.execute(db.sql("SELECT COALESCE(max(id), 0) FROM {s}.events"))
        self._after = int(last)

    def _read(self) -> list[Event]:
        with self._db.cursor(BrokerError, "reading events") as cur:
            rows = cur.execute(
                self._db.sql(
                    "SELECT id, routing_key, body FROM {s}.events WHERE id > %s ORDER BY id"
                    " LIMIT %s"
                ),
                (self._after, _READ_LIMIT),
            ).fetchall()
        out: list[Event] = []
        for row_id, key, body in rows:
            self._after = int(row_id)
            if self.wanted(key):
                out.extend(unpack(json.loads(body)))
        return out

    def receive(self, timeout: float) -> list[Event]:
        until = time.monotonic() + max(0.0, timeout)
        while True:
            out = self._read()
            left = until - time.monotonic()
            if out or left <= 0:
                return out
            self._db.wait((self._channel,), left, BrokerError)

    def close(self) -> None:
        pass  # the connection is the channel's


class PostgresEventChannel(EventChannel):
    def __init__(self, db: Database, retention: float) -> None:
        super().__init__()
        self.db = db
        self.retention = retention
        self.channel = db.channel("ev")
        self._trimmed = 0.0

    def publish(self, events: Sequence[Event], *, grouped: bool = False) -> None:
        now = time.time()
        key, _ = wire_form(events, grouped)  # each row keeps the key its message would have
        trim = now - self._trimmed >= min(TRIM_EVERY, self.retention / 10)
        with self.db.transaction(BrokerError, "publishing events") as cur:
            cur.execute("SELECT pg_advisory_xact_lock(hashtext(%s))", (self.channel,))
            cur.executemany(
                self.db.sql(
                    "INSERT INTO {s}.events (routing_key, created, body) VALUES (%s, %s, %s)"
                ),
                [(key, now, json.dumps(e)) for e in events],
            )
            cur.execute("SELECT pg_notify(%s, '')", (self.channel,))
            if trim:
                cur.execute(self.db.sql(_TRIM), (now - self.retention,))
        if trim:
            self._trimmed = now

    def trim(self) -> int:
        """Delete the events older than the retention now; how many there were."""
        with self.db.cursor(BrokerError, "trimming events") as cur:
            cur.execute(self.db.sql(_TRIM), (time.time() - self.retention,))
            self._trimmed = time.time()
            return cur.rowcount

    def subscribe(self, patterns: Sequence[str] = ("#",)) -> Subscription:
        return PostgresSubscription(self.db, patterns)
