"""Beat state in PostgreSQL (tables ``{schema}.beat_*``).

:meth:`PostgresBeatStore.claim_tick` runs in one transaction that first locks the lease row
(``FOR UPDATE``) if ``holder`` still holds it: the fence and the compare-and-set cannot
interleave with another beat's :meth:`~PostgresBeatStore.acquire`. Expiry uses the beat's own
clock, as every other store does.

Because the queues are in the same database, beat claims a tick and inserts its message in one
transaction (:class:`PostgresTickSender`): the tick is recorded if and only if its message is.
"""

from __future__ import annotations

import json
import logging
import time
from typing import TYPE_CHECKING, Any

from celeriac.beat.store import BeatStore, EntryState, Lease, TickSender
from celeriac.exceptions import BrokerError
from celeriac.transports.options import BROKER, parse_options
from celeriac.transports.postgres.connection import Database
from celeriac.transports.postgres.options import PostgresOptions

if TYPE_CHECKING:
    import psycopg

    from celeriac.protocol.publication import Publication
    from celeriac.transports.postgres.broker import PostgresBroker

logger = logging.getLogger("celeriac.beat")

_LEASE = "beat"
_BUMP = (
    "INSERT INTO {s}.beat_meta AS m (key, value) VALUES ('version', 1)"
    " ON CONFLICT (key) DO UPDATE SET value = m.value + 1"
)


class PostgresBeatStore(BeatStore):
    def __init__(
        self, url: str, transport_options: dict[str, Any] | None = None, *, db: Database
    ) -> None:
        self.options = parse_options(PostgresOptions, transport_options, url=url, setting=BROKER)
        self.db = db

    def _q(self, text: str) -> str:
        return self.db.sql(text)

    def _rows(self, query: str, params: tuple[Any, ...] = ()) -> list[Any]:
        with self.db.cursor(BrokerError, "beat store") as cur:
            return cur.execute(self._q(query), params).fetchall()

    # -- lease ------------------------------------------------------------------------------
    def acquire(self, holder: str, ttl: float) -> bool:
        now = time.time()
        rows = self._rows(
            "INSERT INTO {s}.beat_lease AS l (name, holder, expires_at) VALUES (%s, %s, %s)"
            " ON CONFLICT (name) DO UPDATE SET holder = excluded.holder,"
            " expires_at = excluded.expires_at"
            " WHERE l.holder = excluded.holder OR l.expires_at <= %s"
            " RETURNING holder",
            (_LEASE, holder, now + ttl, now),
        )
        return bool(rows)

    def renew(self, holder: str, ttl: float) -> bool:
        now = time.time()
        rows = self._rows(
            "UPDATE {s}.beat_lease SET expires_at = %s"
            " WHERE name = %s AND holder = %s AND expires_at > %s RETURNING 1",
            (now + ttl, _LEASE, holder, now),
        )
        return len(rows) == 1

    def release(self, holder: str) -> None:
        self._rows(
            "DELETE FROM {s}.beat_lease WHERE name = %s AND holder = %s RETURNING 1",
            (_LEASE, holder),
        )

    def leader(self) -> Lease | None:
        rows = self._rows(
            "SELECT holder, expires_at FROM {s}.beat_lease WHERE name = %s AND expires_at > %s",
            (_LEASE, time.time()),
        )
        return Lease(rows[0][0], float(rows[0][1])) if rows else None

    # -- ticks ------------------------------------------------------------------------------
    def claim_tick(
        self, holder: str, entry: str, tick: float, previous: float | None, *, unsent: bool = False
    ) -> bool:
        with self.db.transaction(BrokerError, "beat: claiming a tick") as cur:
            return self.claim(cur, holder, entry, tick, previous, unsent=unsent)

    def claim(
        self,
        cur: psycopg.Cursor[Any],
        holder: str,
        entry: str,
        tick: float,
        previous: float | None,
        *,
        unsent: bool = False,
    ) -> bool:
        """:meth:`claim_tick` inside the caller's transaction (``cur``'s)."""
        lease = cur.execute(
            self._q(
                "SELECT 1 FROM {s}.beat_lease WHERE name = %s AND holder = %s AND expires_at > %s"
                " FOR UPDATE"
            ),
            (_LEASE, holder, time.time()),
        ).fetchone()
        if lease is None:
            return False
        row = cur.execute(
            self._q(
                "SELECT last_tick, EXISTS (SELECT 1 FROM {s}.beat_unsent u WHERE u.entry = %s)"
                " FROM {s}.beat_state WHERE entry = %s FOR UPDATE"
            ),
            (entry, entry),
        ).fetchone()
        current = row[0] if row is not None else None
        waiting = bool(row[1]) if row is not None else False
        if current != previous or waiting:
            return False
        cur.execute(
            self._q(
                "INSERT INTO {s}.beat_state (entry, last_tick) VALUES (%s, %s)"
                " ON CONFLICT (entry) DO UPDATE SET last_tick = excluded.last_tick"
            ),
            (entry, tick),
        )
        if unsent:
            cur.execute(
                self._q("INSERT INTO {s}.beat_unsent (entry, tick) VALUES (%s, %s)"),
                (entry, tick),
            )
        return True

    def settle_tick(self, entry: str, tick: float, *, sent_at: float | None = None) -> None:
        with self.db.transaction(BrokerError, "beat: settling a tick") as cur:
            cur.execute(
                self._q("DELETE FROM {s}.beat_unsent WHERE entry = %s AND tick = %s"),
                (entry, tick),
            )
            if cur.rowcount and sent_at is not None:
                self.record_sent(cur, entry, sent_at)

    def record_sent(self, cur: psycopg.Cursor[Any], entry: str, sent_at: float) -> None:
        """Record ``entry``'s last send inside the caller's transaction (``cur``'s)."""
        cur.execute(
            self._q(
                "INSERT INTO {s}.beat_sent (entry, sent_at) VALUES (%s, %s)"
                " ON CONFLICT (entry) DO UPDATE SET sent_at = excluded.sent_at"
            ),
            (entry, sent_at),
        )

    def states(self) -> dict[str, EntryState]:
        rows = self._rows(
            "SELECT entry, last_tick, paused,"
            " EXISTS (SELECT 1 FROM {s}.beat_unsent u WHERE u.entry = s.entry),"
            " (SELECT sent_at FROM {s}.beat_sent t WHERE t.entry = s.entry)"
            " FROM {s}.beat_state s"
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
        with self.db.transaction(BrokerError, "beat: storing an entry") as cur:
            conflict = (
                "DO UPDATE SET spec = excluded.spec, updated_at = excluded.updated_at"
                if replace
                else "DO NOTHING"
            )
            cur.execute(
                self._q(
                    "INSERT INTO {s}.beat_entries (name, spec, updated_at) VALUES (%s, %s, %s)"
                    f" ON CONFLICT (name) {conflict} RETURNING 1"
                ),
                (name, doc, time.time()),
            )
            if cur.fetchone() is None:
                return False
            cur.execute(self._q(_BUMP))
            return True

    def remove_entry(self, name: str) -> bool:
        with self.db.transaction(BrokerError, "beat: removing an entry") as cur:
            cur.execute(self._q("DELETE FROM {s}.beat_entries WHERE name = %s"), (name,))
            found = cur.rowcount == 1
            cur.execute(self._q("DELETE FROM {s}.beat_state WHERE entry = %s"), (name,))
            cur.execute(self._q("DELETE FROM {s}.beat_unsent WHERE entry = %s"), (name,))
            cur.execute(self._q("DELETE FROM {s}.beat_sent WHERE entry = %s"), (name,))
            cur.execute(self._q(_BUMP))
            return found

    def set_paused(self, name: str, paused: bool) -> None:
        with self.db.transaction(BrokerError, "beat: pausing an entry") as cur:
            cur.execute(
                self._q(
                    "INSERT INTO {s}.beat_state (entry, paused) VALUES (%s, %s)"
                    " ON CONFLICT (entry) DO UPDATE SET paused = excluded.paused"
                ),
                (name, paused),
            )
            cur.execute(self._q(_BUMP))

    def entries(self) -> dict[str, dict[str, Any]]:
        out = {}
        for name, spec in self._rows("SELECT name, spec FROM {s}.beat_entries"):
            try:
                out[name] = json.loads(spec)
            except ValueError as exc:
                # One unreadable row must not stop the others.
                logger.error("beat entry %r is not JSON (%s); left out", name, exc)
        return out

    def version(self) -> int:
        rows = self._rows("SELECT value FROM {s}.beat_meta WHERE key = 'version'")
        return int(rows[0][0]) if rows else 0


class PostgresTickSender(TickSender):
    """Claims a tick and inserts its message in one transaction of the database both live in."""

    broker: PostgresBroker
    store: PostgresBeatStore

    def claim_and_send(
        self, holder: str, entry: str, tick: float, previous: float | None, publication: Publication
    ) -> bool:
        rows = self.broker.rows([publication])
        with self.broker.db.transaction(BrokerError, "beat: claiming and sending a tick") as cur:
            if not self.store.claim(cur, holder, entry, tick, previous):
                return False
            self.broker.insert(cur, rows)
            self.store.record_sent(cur, entry, self.clock())
        return True
