"""Remote control in the SQLite file: a table of commands and a table of replies, polled.

A node reads the commands added after it began listening (as Celery's pub/sub, a node that was
not listening never sees a command); a client reads the replies addressed to its oid and deletes
them. Every broadcast trims what is old: commands after :data:`COMMAND_TTL`, replies nobody
collected after :data:`REPLY_TTL`.
"""

from __future__ import annotations

import json
import logging
import time
from typing import Any

from celeriac.control.mailbox import COMMAND_TTL, REPLY_TTL, Mailbox, Raw, decode_row
from celeriac.transports.sqlite.connection import SQLiteFile, wait_for_change

logger = logging.getLogger("celeriac.control")

SCHEMA = """
CREATE TABLE IF NOT EXISTS celeriac_control_commands (
    id      INTEGER PRIMARY KEY AUTOINCREMENT,
    created REAL NOT NULL,
    body    TEXT NOT NULL,
    headers TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS celeriac_control_replies (
    id      INTEGER PRIMARY KEY AUTOINCREMENT,
    oid     TEXT NOT NULL,
    created REAL NOT NULL,
    body    TEXT NOT NULL,
    headers TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS celeriac_control_replies_oid ON celeriac_control_replies (oid, id);
"""

#: s between looks at the file while waiting.
_POLL = 0.05


class SQLiteMailbox(Mailbox):
    def __init__(self, db: SQLiteFile) -> None:
        super().__init__()
        self.db = db
        self._after = 0  # the last command id seen
        self._version = 0

    def _wait(self, timeout: float) -> None:
        self._version = wait_for_change(self.db, self._version, time.time() + timeout, _POLL)

    # -- the worker's side -----------------------------------------------------------------------
    def _listen(self, node: str) -> None:
        [(last,)] = self.db.read("SELECT COALESCE(MAX(id), 0) FROM celeriac_control_commands")
        self._after = int(last)
        self._version = self.db.data_version()

    def _receive(self, timeout: float) -> list[Raw]:
        deadline = time.time() + timeout
        while True:
            rows = self.db.read(
                "SELECT id, body, headers FROM celeriac_control_commands WHERE id > ? ORDER BY id",
                (self._after,),
            )
            if rows:
                self._after = int(rows[-1][0])
                return [r for _, b, h in rows if (r := decode_row(b, h)) is not None]
            if time.time() >= deadline:
                return []
            self._wait(deadline - time.time())

    def _reply(self, oid: str, body: dict[str, Any], headers: dict[str, Any]) -> None:
        with self.db.write() as conn:
            conn.execute(
                "INSERT INTO celeriac_control_replies (oid, created, body, headers) "
                "VALUES (?, ?, ?, ?)",
                (oid, time.time(), json.dumps(body), json.dumps(headers)),
            )

    # -- the client's side -----------------------------------------------------------------------
    def _publish(self, body: dict[str, Any], headers: dict[str, Any]) -> None:
        now = time.time()
        with self.db.write() as conn:
            conn.execute(
                "DELETE FROM celeriac_control_commands WHERE created < ?", (now - COMMAND_TTL,)
            )
            conn.execute(
                "DELETE FROM celeriac_control_replies WHERE created < ?", (now - REPLY_TTL,)
            )
            conn.execute(
                "INSERT INTO celeriac_control_commands (created, body, headers) VALUES (?, ?, ?)",
                (now, json.dumps(body), json.dumps(headers)),
            )

    def _open_replies(self, oid: str) -> None:
        self._version = self.db.data_version()

    def _replies(self, oid: str, timeout: float) -> list[Raw]:
        deadline = time.time() + timeout
        while True:
            with self.db.write() as conn:
                rows = conn.execute(
                    "DELETE FROM celeriac_control_replies WHERE oid = ? "
                    "RETURNING id, body, headers",
                    (oid,),
                ).fetchall()
            if rows:
                rows.sort()
                return [r for _, b, h in rows if (r := decode_row(b, h)) is not None]
            if time.time() >= deadline:
                return []
            self._wait(deadline - time.time())

    def _close_replies(self, oid: str) -> None:
        with self.db.write() as conn:
            conn.execute("DELETE FROM celeriac_control_replies WHERE oid = ?", (oid,))
