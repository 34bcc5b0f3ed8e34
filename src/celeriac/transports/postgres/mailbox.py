"""Remote control in PostgreSQL: a table of commands and a table of replies, woken by NOTIFY.

A node reads the commands added after it began listening (as with Celery's pub/sub, a node that
was not listening never sees a command); commands are inserted under a transaction-level
advisory lock so ids commit in order and a reader going by id skips none. A client reads and
deletes the replies addressed to its oid. Every broadcast trims what is old: commands after
:data:`COMMAND_TTL`, replies nobody collected after :data:`REPLY_TTL`.
"""

from __future__ import annotations

import json
import logging
import time
from typing import Any

from celeriac.control.mailbox import COMMAND_TTL, REPLY_TTL, Mailbox, Raw, decode_row
from celeriac.exceptions import BrokerError
from celeriac.transports.postgres.connection import Database

logger = logging.getLogger("celeriac.control")

#: s between reads of the commands table with no NOTIFY (one lost with a connection is found)
LOOK_EVERY = 10.0


class PostgresMailbox(Mailbox):
    def __init__(self, db: Database) -> None:
        super().__init__()
        self.db = db
        self._commands = db.channel("ctl")
        self._replies_channel = db.channel("ctl_r")
        self._after = 0
        self._conn: object = None  # the connection the last read listened on
        self._next_look = 0.0

    def _rows(self, what: str, query: str, params: tuple[Any, ...] = ()) -> list[Any]:
        with self.db.cursor(BrokerError, what) as cur:
            return cur.execute(self.db.sql(query), params).fetchall()

    # -- the worker's side -----------------------------------------------------------------------
    def _listen(self, node: str) -> None:
        self._conn = self.db.listen((self._commands,), BrokerError)
        self._next_look = time.monotonic() + LOOK_EVERY
        [(last,)] = self._rows(
            "remote control", "SELECT COALESCE(max(id), 0) FROM {s}.control_commands"
        )
        self._after = int(last)

    def _receive(self, timeout: float) -> list[Raw]:
        # A worker asks every half second: read the table only after a NOTIFY, on a new
        # connection (it may have missed one) or every LOOK_EVERY s, so an idle node costs
        # nothing but the wait.
        until = time.monotonic() + timeout
        conn = self.db.listen((self._commands,), BrokerError)
        fresh = conn is not self._conn or time.monotonic() >= self._next_look
        while True:
            if fresh:
                self._conn, self._next_look = conn, time.monotonic() + LOOK_EVERY
                rows = self._rows(
                    "reading remote-control commands",
                    "SELECT id, body, headers FROM {s}.control_commands WHERE id > %s ORDER BY id",
                    (self._after,),
                )
                if rows:
                    self._after = int(rows[-1][0])
                    return [r for _, b, h in rows if (r := decode_row(b, h)) is not None]
            now = time.monotonic()
            if now >= until:
                return []
            heard = self.db.wait((self._commands,), min(until, self._next_look) - now, BrokerError)
            fresh = bool(heard) or time.monotonic() >= self._next_look

    def _reply(self, oid: str, body: dict[str, Any], headers: dict[str, Any]) -> None:
        with self.db.transaction(BrokerError, "sending a remote-control reply") as cur:
            cur.execute(
                self.db.sql(
                    "INSERT INTO {s}.control_replies (oid, created, body, headers)"
                    " VALUES (%s, %s, %s, %s)"
                ),
                (oid, time.time(), json.dumps(body), json.dumps(headers)),
            )
            cur.execute("SELECT pg_notify(%s, %s)", (self._replies_channel, oid))

    # -- the client's side -----------------------------------------------------------------------
    def _publish(self, body: dict[str, Any], headers: dict[str, Any]) -> None:
        now = time.time()
        with self.db.transaction(BrokerError, "sending a remote-control command") as cur:
            cur.execute("SELECT pg_advisory_xact_lock(hashtext(%s))", (self._commands,))
            cur.execute(
                self.db.sql("DELETE FROM {s}.control_commands WHERE created < %s"),
                (now - COMMAND_TTL,),
            )
            cur.execute(
                self.db.sql("DELETE FROM {s}.control_replies WHERE created < %s"),
                (now - REPLY_TTL,),
            )
            cur.execute(
                self.db.sql(
                    "INSERT INTO {s}.control_commands (created, body, headers) VALUES (%s, %s, %s)"
                ),
                (now, json.dumps(body), json.dumps(headers)),
            )
            cur.execute("SELECT pg_notify(%s, '')", (self._commands,))

    def _open_replies(self, oid: str) -> None:
        self.db.listen((self._replies_channel,), BrokerError)

    def _replies(self, oid: str, timeout: float) -> list[Raw]:
        until = time.monotonic() + timeout
        while True:
            rows = self._rows(
                "reading remote-control replies",
                "DELETE FROM {s}.control_replies WHERE oid = %s RETURNING id, body, headers",
                (oid,),
            )
            if rows:
                rows.sort()
                return [r for _, b, h in rows if (r := decode_row(b, h)) is not None]
            left = until - time.monotonic()
            if left <= 0:
                return []
            self.db.wait((self._replies_channel,), left, BrokerError)

    def _close_replies(self, oid: str) -> None:
        self._rows(
            "remote control",
            "DELETE FROM {s}.control_replies WHERE oid = %s RETURNING 1",
            (oid,),
        )
