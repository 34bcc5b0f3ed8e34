"""Beat state in the SQLite broker's own file (tables ``celeriac_beat_*``).

Every write is one ``BEGIN IMMEDIATE`` transaction, so the lease check and the tick's
compare-and-set in :meth:`claim_tick` cannot interleave with another beat's. Lease expiry uses
this machine's clock, which every process sharing the file shares too.

Because the queues are in the same file, beat claims a tick and inserts its message in one
transaction (:class:`SQLiteTickSender`): the tick is recorded if and only if its message is.
"""

from __future__ import annotations

import json
import logging
import sqlite3
import time
from typing import TYPE_CHECKING, Any

from celeriac._fork import fork_guard
from celeriac.beat.store import BeatStore, EntryState, Lease, TickSender
from celeriac.exceptions import BrokerError
from celeriac.transports.options import BROKER, parse_options
from celeriac.transports.sqlite.broker import insert_rows
from celeriac.transports.sqlite.connection import SQLiteFile
from celeriac.transports.sqlite.options import SQLiteOptions

if TYPE_CHECKING:
    from celeriac.protocol.publication import Publication
    from celeriac.transports.sqlite.broker import SQLiteBroker

SCHEMA = """
CREATE TABLE IF NOT EXISTS celeriac_beat_lease (
    name       TEXT PRIMARY KEY,
    holder     TEXT NOT NULL,
    expires_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS celeriac_beat_state (
    entry     TEXT PRIMARY KEY,
    last_tick REAL,
    paused    INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS celeriac_beat_unsent (
    entry TEXT PRIMARY KEY,
    tick  REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS celeriac_beat_sent (
    entry   TEXT PRIMARY KEY,
    sent_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS celeriac_beat_entries (
    name       TEXT PRIMARY KEY,
    spec       TEXT NOT NULL,
    updated_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS celeriac_beat_meta (
    key   TEXT PRIMARY KEY,
    value INTEGER NOT NULL
);
"""

logger = logging.getLogger("celeriac.beat")

_LEASE = "beat"
_BUMP = (
    "INSERT INTO celeriac_beat_meta (key, value) VALUES ('version', 1)"
    " ON CONFLICT (key) DO UPDATE SET value = value + 1"
)


class SQLiteBeatStore(BeatStore):
    def __init__(
        self, url: str, transport_options: dict[str, Any] | None = None, *, db: SQLiteFile
    ) -> None:
        self.options = parse_options(SQLiteOptions, transport_options, url=url, setting=BROKER)
        self.db = db

    # -- lease ------------------------------------------------------------------------------
    def acquire(self, holder: str, ttl: float) -> bool:
        now = time.time()
        with self.db.write() as conn:
            row = conn.execute(
                "INSERT INTO celeriac_beat_lease (name, holder, expires_at) VALUES (?, ?, ?)"
                " ON CONFLICT (name) DO UPDATE SET holder = excluded.holder,"
                " expires_at = excluded.expires_at"
                " WHERE holder = excluded.holder OR expires_at <= ?"
                " RETURNING holder",
                (_LEASE, holder, now + ttl, now),
            ).fetchone()
        return row is not None

    def renew(self, holder: str, ttl: float) -> bool:
        now = time.time()
        with self.db.write() as conn:
            cur = conn.execute(
                "UPDATE celeriac_beat_lease SET expires_at = ?"
                " WHERE name = ? AND holder = ? AND expires_at > ?",
                (now + ttl, _LEASE, holder, now),
            )
            return cur.rowcount == 1

    def release(self, holder: str) -> None:
        with self.db.write() as conn:
            conn.execute(
                "DELETE FROM celeriac_beat_lease WHERE name = ? AND holder = ?", (_LEASE, holder)
            )

    def _read(self, sql: str, params: tuple[Any, ...] = ()) -> list[Any]:
        with fork_guard:
            try:
                return self.db.connection().execute(sql, params).fetchall()
            except sqlite3.Error as exc:
                raise BrokerError(f"beat store {self.db.path}: {exc}") from exc

    def leader(self) -> Lease | None:
        rows = self._read(
            "SELECT holder, expires_at FROM celeriac_beat_lease WHERE name = ? AND expires_at > ?",
            (_LEASE, time.time()),
        )
        return Lease(rows[0][0], float(rows[0][1])) if rows else None

    # -- ticks ------------------------------------------------------------------------------
    def claim_tick(
        self, holder: str, entry: str, tick: float, previous: float | None, *, unsent: bool = False
    ) -> bool:
        with self.db.write() as conn:
            return self.claim(conn, holder, entry, tick, previous, unsent=unsent)

    def claim(
        self,
        conn: sqlite3.Connection,
        holder: str,
        entry: str,
        tick: float,
        previous: float | None,
        *,
        unsent: bool = False,
    ) -> bool:
        """:meth:`claim_tick` inside the caller's write transaction on this file."""
        # The fence: checked inside the same write transaction as the compare-and-set.
        lease = conn.execute(
            "SELECT 1 FROM celeriac_beat_lease WHERE name = ? AND holder = ? AND expires_at > ?",
            (_LEASE, holder, time.time()),
        ).fetchone()
        if lease is None:
            return False
        row = conn.execute(
            "SELECT last_tick FROM celeriac_beat_state WHERE entry = ?", (entry,)
        ).fetchone()
        current = row[0] if row is not None else None
        waiting = conn.execute(
            "SELECT 1 FROM celeriac_beat_unsent WHERE entry = ?", (entry,)
        ).fetchone()
        if current != previous or waiting is not None:
            return False
        conn.execute(
            "INSERT INTO celeriac_beat_state (entry, last_tick) VALUES (?, ?)"
            " ON CONFLICT (entry) DO UPDATE SET last_tick = excluded.last_tick",
            (entry, tick),
        )
        if unsent:
            conn.execute(
                "INSERT INTO celeriac_beat_unsent (entry, tick) VALUES (?, ?)", (entry, tick)
            )
        return True

    def settle_tick(self, entry: str, tick: float, *, sent_at: float | None = None) -> None:
        with self.db.write() as conn:
            settled = conn.execute(
                "DELETE FROM celeriac_beat_unsent WHERE entry = ? AND tick = ?", (entry, tick)
            ).rowcount
            if settled and sent_at is not None:
                self.record_sent(conn, entry, sent_at)

    def record_sent(self, conn: sqlite3.Connection, entry: str, sent_at: float) -> None:
        """Record ``entry``'s last send inside the caller's write transaction."""
        conn.execute(
            "INSERT INTO celeriac_beat_sent (entry, sent_at) VALUES (?, ?)"
            " ON CONFLICT (entry) DO UPDATE SET sent_at = excluded.sent_at",
            (entry, sent_at),
        )

    def states(self) -> dict[str, EntryState]:
        rows = self._read(
            "SELECT entry, last_tick, paused,"
            " EXISTS (SELECT 1 FROM celeriac_beat_unsent u WHERE u.entry = s.entry),"
            " (SELECT sent_at FROM celeriac_beat_sent t WHERE t.entry = s.entry)"
            " FROM celeriac_beat_state s"
        )
        return {
            r[0]: EntryState(
                float(r[1]) if r[1] is not None else None,
                bool(r[2]),
                bool(r[3]),
                float(r[4]) if r[4] is not None else None,
            )
            for r in rows
        }

    # -- dynamic entries --------------------------------------------------------------------
    def put_entry(self, name: str, spec: dict[str, Any], *, replace: bool) -> bool:
        doc = json.dumps(spec, separators=(",", ":"))
        with self.db.write() as conn:
            if not replace:
                exists = conn.execute(
                    "SELECT 1 FROM celeriac_beat_entries WHERE name = ?", (name,)
                ).fetchone()
                if exists:
                    return False
            conn.execute(
                "INSERT INTO celeriac_beat_entries (name, spec, updated_at) VALUES (?, ?, ?)"
                " ON CONFLICT (name) DO UPDATE SET spec = excluded.spec,"
                " updated_at = excluded.updated_at",
                (name, doc, time.time()),
            )
            conn.execute(_BUMP)
            return True

    def remove_entry(self, name: str) -> bool:
        with self.db.write() as conn:
            found = conn.execute(
                "DELETE FROM celeriac_beat_entries WHERE name = ?", (name,)
            ).rowcount
            conn.execute("DELETE FROM celeriac_beat_state WHERE entry = ?", (name,))
            conn.execute("DELETE FROM celeriac_beat_unsent WHERE entry = ?", (name,))
            conn.execute("DELETE FROM celeriac_beat_sent WHERE entry = ?", (name,))
            conn.execute(_BUMP)
            return found == 1

    def set_paused(self, name: str, paused: bool) -> None:
        with self.db.write() as conn:
            conn.execute(
                "INSERT INTO celeriac_beat_state (entry, paused) VALUES (?, ?)"
                " ON CONFLICT (entry) DO UPDATE SET paused = excluded.paused",
                (name, int(paused)),
            )
            conn.execute(_BUMP)

    def entries(self) -> dict[str, dict[str, Any]]:
        out = {}
        for name, spec in self._read("SELECT name, spec FROM celeriac_beat_entries"):
            try:
                out[name] = json.loads(spec)
            except (TypeError, ValueError) as exc:
                # Beat reads every entry on each refresh: one unreadable row must not stop the
                # others (a spec that is JSON but not an entry is the scheduler's to refuse).
                logger.error(
                    "beat entry %r in %s is not JSON (%s); left out until it is replaced or "
                    "removed",
                    name,
                    self.db.path,
                    exc,
                )
        return out

    def version(self) -> int:
        rows = self._read("SELECT value FROM celeriac_beat_meta WHERE key = 'version'")
        return int(rows[0][0]) if rows else 0


class SQLiteTickSender(TickSender):
    """Claims a tick and inserts its message in one transaction of the file both live in."""

    broker: SQLiteBroker
    store: SQLiteBeatStore

    def claim_and_send(
        self, holder: str, entry: str, tick: float, previous: float | None, publication: Publication
    ) -> bool:
        rows = self.broker.rows([publication])
        self.store.db.open()  # made the beat tables; the broker's connection made its own
        with self.broker.db.write() as conn:
            if not self.store.claim(conn, holder, entry, tick, previous):
                return False
            insert_rows(conn, rows)
            self.store.record_sent(conn, entry, self.clock())
        return True
