"""Results in an SQLite file (by default the broker's own file).

Reading a row that does not hold a result document (a hand edit, a damaged page) is a
:class:`BackendError` naming what is wrong, as any other failure to read a result is.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Sequence
from typing import Any

from celeriac.backends.base import CHORD_CLAIM_STALE, ChordPart, EncodedResult, ResultBackend
from celeriac.exceptions import BackendError, ProtocolError
from celeriac.transports.sqlite.connection import SQLiteFile, wait_for_change

SCHEMA = """
CREATE TABLE IF NOT EXISTS celeriac_results (
    task_id    TEXT PRIMARY KEY,
    status     TEXT NOT NULL,
    meta       BLOB NOT NULL,
    expires_at REAL
);
CREATE INDEX IF NOT EXISTS celeriac_results_expiry
    ON celeriac_results (expires_at) WHERE expires_at IS NOT NULL;
CREATE TABLE IF NOT EXISTS celeriac_chords (
    group_id   TEXT PRIMARY KEY,
    size       INTEGER,
    claimed_at REAL,
    claimer    TEXT,
    done       INTEGER NOT NULL DEFAULT 0,
    expires_at REAL
);
CREATE TABLE IF NOT EXISTS celeriac_chord_parts (
    group_id TEXT    NOT NULL,
    idx      INTEGER NOT NULL,
    task_id  TEXT    NOT NULL,
    status   TEXT    NOT NULL,
    meta     BLOB    NOT NULL,
    PRIMARY KEY (group_id, idx)
);
CREATE TABLE IF NOT EXISTS celeriac_groups (
    group_id   TEXT PRIMARY KEY,
    meta       BLOB NOT NULL,
    expires_at REAL
);
"""


def upgrade(conn: sqlite3.Connection) -> None:
    """Files made before chords recorded their claimer get the column (NULL: unclaimed)."""
    columns = {row[1] for row in conn.execute("PRAGMA table_info(celeriac_chords)")}
    if "claimer" in columns:
        return
    try:
        conn.execute("ALTER TABLE celeriac_chords ADD COLUMN claimer TEXT")
    except sqlite3.OperationalError as exc:
        if "duplicate column" not in str(exc).lower():  # another process was first
            raise


# A stored SUCCESS is final until it expires: the WHERE on the upsert makes that atomic.
_UPSERT = """
INSERT INTO celeriac_results (task_id, status, meta, expires_at) VALUES (?, ?, ?, ?)
ON CONFLICT (task_id) DO UPDATE
   SET status = excluded.status, meta = excluded.meta, expires_at = excluded.expires_at
 WHERE celeriac_results.status != 'SUCCESS' OR celeriac_results.expires_at <= ?
"""

_SWEEP_EVERY = 60.0


def _states_sql(count: int) -> str:
    return (
        "SELECT task_id, status FROM celeriac_results WHERE task_id IN"
        f" ({','.join('?' * count)}) AND (expires_at IS NULL OR expires_at > ?)"
    )


#: s a waiting get() sleeps before its first look for a change (then x1.5 a look)
_FIRST_LOOK = 0.0001


class SQLiteBackend(ResultBackend):
    def __init__(self, url: str, *, db: SQLiteFile, **kwargs: Any) -> None:
        super().__init__(url, **kwargs)
        self.db = db
        self.polling_interval = 0.002
        self._last_sweep = 0.0

    def _store(self, items: Sequence[EncodedResult]) -> None:
        try:
            with self.db.write() as conn:
                self.store_in(conn, items)
        except (sqlite3.Error, BackendError) as exc:
            raise BackendError(f"storing {len(items)} result(s) failed: {exc}") from exc

    def store_in(self, conn: sqlite3.Connection, items: Sequence[EncodedResult]) -> None:
        """Store ``items`` inside the caller's write transaction on this file (the broker's,
        on the combined path: ``transport.py``)."""
        now = time.time()
        expires_at = now + self.expires if self.expires else None
        conn.executemany(_UPSERT, [(r.task_id, r.state, r.meta, expires_at, now) for r in items])
        if now - self._last_sweep > _SWEEP_EVERY:
            self._last_sweep = now
            conn.execute("DELETE FROM celeriac_results WHERE expires_at < ?", (now,))

    def _load(self, task_id: str) -> bytes | None:
        rows = self.db.read(
            "SELECT meta FROM celeriac_results WHERE task_id = ?"
            " AND (expires_at IS NULL OR expires_at > ?)",
            (task_id, time.time()),
        )
        return self._blob(rows[0][0], f"the result of {task_id}") if rows else None

    def decode_meta(self, data: bytes) -> dict[str, Any]:
        try:
            return super().decode_meta(data)
        except ProtocolError as exc:
            raise BackendError(f"a result stored in {self.db.path} is unreadable: {exc}") from exc

    def get_states(self, task_ids: Sequence[str]) -> dict[str, str]:
        if not task_ids:
            return {}
        out: dict[str, str] = {}
        now = time.time()
        ids = list(task_ids)
        for i in range(0, len(ids), 500):  # SQLite caps the number of bound parameters
            chunk = ids[i : i + 500]
            rows = self.db.read(_states_sql(len(chunk)), (*chunk, now))
            out.update((task_id, str(status)) for task_id, status in rows)
        return out

    def states_in(self, conn: sqlite3.Connection, task_ids: Sequence[str]) -> dict[str, str]:
        """:meth:`get_states` read inside the caller's transaction (the combined path)."""
        out: dict[str, str] = {}
        now = time.time()
        for i in range(0, len(task_ids), 500):
            chunk = task_ids[i : i + 500]
            rows = conn.execute(_states_sql(len(chunk)), (*chunk, now)).fetchall()
            out.update((task_id, str(status)) for task_id, status in rows)
        return out

    def _blob(self, value: object, what: str) -> bytes:
        """A stored document's bytes; ``bytes(5)`` would be five zero bytes, so a number (or
        anything but a blob or text) is an error, not a document."""
        if isinstance(value, bytes):
            return value
        if isinstance(value, str):
            return value.encode("utf-8", "surrogateescape")
        kind = "NULL" if value is None else type(value).__name__
        raise BackendError(f"{what} in {self.db.path} is {kind}, not a stored document")

    # -- chords: the count, the dedup and the claim in one transaction ---------------------
    def chord_start(self, group_id: str, size: int) -> None:
        with self.db.write() as conn:
            conn.execute(
                "INSERT INTO celeriac_chords (group_id, size, expires_at) VALUES (?, ?, ?)"
                " ON CONFLICT (group_id) DO UPDATE SET size = excluded.size",
                (group_id, size, self._expires_at()),
            )

    def chord_record(self, parts: Sequence[ChordPart]) -> list[str]:
        now = time.time()
        claimed: list[str] = []
        with self.db.write() as conn:
            # A redelivered header task finds its row already there: counted once.
            conn.executemany(
                "INSERT OR IGNORE INTO celeriac_chord_parts (group_id, idx, task_id, status, meta)"
                " VALUES (?, ?, ?, ?, ?)",
                [(p.group_id, p.index, p.task_id, p.state, p.meta) for p in parts],
            )
            sizes = {p.group_id: p.size for p in parts}
            conn.executemany(
                "INSERT OR IGNORE INTO celeriac_chords (group_id, size, expires_at)"
                " VALUES (?, ?, ?)",
                [(gid, size, self._expires_at()) for gid, size in sizes.items()],
            )
            # The part that completes a chord claims it, and so does that part again when its
            # message comes back (its worker died before the chord was done: the body may not
            # have been sent). Anyone else only once the claim is stale.
            claimers = {p.group_id: p.task_id for p in parts}
            for gid in sizes:
                row = conn.execute(
                    "UPDATE celeriac_chords SET claimed_at = ?, claimer = ?"
                    " WHERE group_id = ? AND done = 0"
                    "   AND (claimed_at IS NULL OR claimed_at < ? OR claimer = ?)"
                    "   AND size <= (SELECT COUNT(*) FROM celeriac_chord_parts WHERE group_id = ?)"
                    " RETURNING group_id",
                    (now, claimers[gid], gid, now - CHORD_CLAIM_STALE, claimers[gid], gid),
                ).fetchone()
                if row is not None:
                    claimed.append(gid)
        return claimed

    def chord_results(self, group_id: str) -> list[EncodedResult]:
        rows = self.db.read(
            "SELECT task_id, status, meta FROM celeriac_chord_parts WHERE group_id = ?"
            " ORDER BY idx",
            (group_id,),
        )
        return [
            EncodedResult(str(tid), str(status), self._blob(meta, f"chord part {tid}"))
            for tid, status, meta in rows
        ]

    def chord_done(self, group_id: str) -> None:
        with self.db.write() as conn:
            conn.execute("UPDATE celeriac_chords SET done = 1 WHERE group_id = ?", (group_id,))
            conn.execute("DELETE FROM celeriac_chord_parts WHERE group_id = ?", (group_id,))

    def save_group(self, group_id: str, result_tuple: Any) -> None:
        data = self.encode_meta({"result": result_tuple})
        with self.db.write() as conn:
            conn.execute(
                "INSERT OR REPLACE INTO celeriac_groups (group_id, meta, expires_at)"
                " VALUES (?, ?, ?)",
                (group_id, data, self._expires_at()),
            )

    def restore_group(self, group_id: str) -> Any:
        rows = self.db.read(
            "SELECT meta FROM celeriac_groups WHERE group_id = ?"
            " AND (expires_at IS NULL OR expires_at > ?)",
            (group_id, time.time()),
        )
        if not rows:
            return None
        return self.decode_meta(self._blob(rows[0][0], f"group {group_id}")).get("result")

    def forget_group(self, group_id: str) -> None:
        with self.db.write() as conn:
            conn.execute("DELETE FROM celeriac_groups WHERE group_id = ?", (group_id,))

    def _expires_at(self) -> float | None:
        return time.time() + self.expires if self.expires else None

    def _delete(self, task_id: str) -> None:
        with self.db.write() as conn:
            conn.execute("DELETE FROM celeriac_results WHERE task_id = ?", (task_id,))

    def _change_token(self) -> Any:
        return self.db.data_version()

    def _wait_for_change(self, task_id: str, token: Any, timeout: float) -> None:
        # From 0.1 ms up: a no-op task's result is there about a millisecond after it was
        # sent, which whole 2 ms steps would see 1 ms late on average.
        wait_for_change(
            self.db, token, time.time() + timeout, self.polling_interval, first=_FIRST_LOOK
        )
