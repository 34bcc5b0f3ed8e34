"""The embedded default broker: one SQLite file, safe for many processes on one machine.

A message row is in one of three states: ready (0), delayed (1: waiting for its ETA) or leased
(2: a worker has it until ``visible_at``). Delayed and leased rows share one index on
``visible_at``, so promoting due ETAs and recovering a dead worker's messages is one range scan,
done inside the same transaction that claims the next batch.

A row that does not make a message (see :mod:`.rows`) is dead-lettered with the reason in the
claim that found it, and the rest of the batch is delivered: one bad row must not stop a queue.

A lease that ran out while the file could not be written (a full disk) is no sign of a dead
worker: its holder could not renew it, and may have finished the task and be waiting to store
the result. The first claim that succeeds after failed writes gives such leases one more full
lease instead of delivering their messages again; a holder that is alive renews it from then on,
a dead one's messages come back one lease later.
"""

from __future__ import annotations

import logging
import sqlite3
import time
from collections.abc import Callable, Sequence
from typing import Any

from celeriac.brokers.base import Broker, DeadLetter, Delivery
from celeriac.exceptions import BrokerError, PublishRefused
from celeriac.protocol import fastjson
from celeriac.protocol.jsontext import encoder
from celeriac.protocol.publication import Publication
from celeriac.transports.sqlite import dead_letters
from celeriac.transports.sqlite.connection import SQLiteFile
from celeriac.transports.sqlite.options import SQLiteOptions
from celeriac.transports.sqlite.rows import UnreadableRow, message_of, salvage

logger = logging.getLogger("celeriac.broker.sqlite")

READY, DELAYED, LEASED = 0, 1, 2
#: For this long (s) after a claim found messages, an idle consumer looks for more every
#: _BRISK_POLL s instead of every ``polling_interval``: a caller waiting on each result sends
#: the next task about a millisecond after the last one ended (a look costs a few us).
_BRISK_FOR = 0.1
_BRISK_POLL = 0.00025

SCHEMA = (
    """
CREATE TABLE IF NOT EXISTS celeriac_messages (
    id               INTEGER PRIMARY KEY AUTOINCREMENT,
    queue            TEXT    NOT NULL,
    priority         INTEGER NOT NULL DEFAULT 0,
    state            INTEGER NOT NULL,
    visible_at       REAL    NOT NULL,
    delivery_count   INTEGER NOT NULL DEFAULT 0,
    headers          TEXT    NOT NULL,
    properties       TEXT    NOT NULL,
    content_type     TEXT    NOT NULL,
    content_encoding TEXT    NOT NULL,
    body             BLOB    NOT NULL
);
CREATE INDEX IF NOT EXISTS celeriac_messages_ready
    ON celeriac_messages (queue, priority DESC, id) WHERE state = 0;
CREATE INDEX IF NOT EXISTS celeriac_messages_timed
    ON celeriac_messages (visible_at) WHERE state > 0;
CREATE TABLE IF NOT EXISTS celeriac_rate_limits (
    key     TEXT PRIMARY KEY,
    next_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS celeriac_dead_letters (
    id               INTEGER PRIMARY KEY AUTOINCREMENT,
    queue            TEXT    NOT NULL,
    reason           TEXT    NOT NULL,
    failed_at        REAL    NOT NULL,
    headers          TEXT    NOT NULL,
    properties       TEXT    NOT NULL,
    content_type     TEXT    NOT NULL,
    content_encoding TEXT    NOT NULL,
    body             BLOB    NOT NULL
);
"""
    + dead_letters.INDEX
)

_CLAIM = """
UPDATE celeriac_messages
   SET state = 2, visible_at = ?, delivery_count = delivery_count + 1
 WHERE id IN (SELECT id FROM celeriac_messages
               WHERE state = 0 AND queue = ?
               ORDER BY priority DESC, id LIMIT ?)
RETURNING id, queue, delivery_count, headers, properties, content_type, content_encoding, body,
          priority
"""


#: Run inside a claim's write transaction: before the claim (``first``: the combined path's
#: results and acks), or after it with what it claimed (``then``: their stored states).
First = Callable[[sqlite3.Connection], None]
Then = Callable[[sqlite3.Connection, list[Delivery]], None]


#: Headers and properties as columns: json.dumps(obj, separators=(",", ":"), default=str), or
#: orjson's text of a plain value (the same value).
_dumps = fastjson.text_encoder(encoder(separators=(",", ":"), default=str))


class SQLiteBroker(Broker):
    """Leased delivery over one SQLite file in WAL mode (its ``broker_transport_options``:
    :class:`.options.SQLiteOptions`)."""

    options_class = SQLiteOptions
    options: SQLiteOptions

    def __init__(
        self, url: str, transport_options: dict[str, Any] | None = None, *, db: SQLiteFile
    ) -> None:
        super().__init__(url, transport_options)
        self.db = db
        self._next_due = 0.0
        #: when a claim last found messages (time.time())
        self._found_at = 0.0
        self._rotation = 0

    # -- publishing -------------------------------------------------------------------------
    def publish(self, publication: Publication) -> None:
        self.publish_many([publication])

    def publish_many(self, publications: Sequence[Publication]) -> None:
        """All in one transaction: a group or chord of any size costs one commit."""
        rows = self.rows(publications)
        try:
            with self.db.write() as conn:
                insert_rows(conn, rows)
        except (sqlite3.Error, BrokerError) as exc:
            queues = ", ".join(map(repr, sorted({p.route.name for p in publications})))
            if isinstance(exc.__cause__ or exc, sqlite3.IntegrityError):
                # A constraint (a trigger, say) refused the rows: no retry mends that.
                raise PublishRefused(f"publish to {queues} refused: {exc}") from exc
            raise BrokerError(f"publish to {queues} failed: {exc}") from exc

    def rows(self, publications: Sequence[Publication]) -> list[tuple[Any, ...]]:
        """The message rows for ``publications``, one per queue each reaches, for
        :func:`insert_rows` (which beat also uses, to insert a tick's message in the same
        transaction as the tick: ``beat_store.SQLiteTickSender``)."""
        now = time.time()
        rows: list[tuple[Any, ...]] = []
        for p in publications:
            message, eta = p.message, p.eta
            delayed = eta is not None and eta > now
            rows.extend(
                (
                    queue,
                    p.priority,
                    DELAYED if delayed else READY,
                    eta if delayed else now,
                    _dumps(message.headers),
                    _dumps(message.properties),
                    message.content_type,
                    message.content_encoding,
                    message.body,
                )
                for queue in self.local_targets(p.route)
            )
        return rows

    # -- consuming --------------------------------------------------------------------------
    def fetch(self, queues: Sequence[str], limit: int, *, timeout: float) -> list[Delivery]:
        return self.fetch_within(queues, limit, timeout=timeout)

    def fetch_within(
        self,
        queues: Sequence[str],
        limit: int,
        *,
        timeout: float,
        first: First | None = None,
        then: Then | None = None,
    ) -> list[Delivery]:
        """:meth:`fetch`, doing more in the claim's transaction: ``first`` before the first
        claim (it runs even when ``limit`` is 0 or nothing is ready), ``then`` after each claim
        that leased something. The combined path (``combined.py``) stores results and acks
        in ``first`` and reads the claimed tasks' states in ``then``: one commit per batch."""
        self.refuse_broadcast(queues)
        if limit <= 0:
            if first is not None:
                try:
                    with self.db.write() as conn:
                        first(conn)
                except (sqlite3.Error, BrokerError) as exc:
                    raise BrokerError(f"settling failed: {exc}") from exc
            return []
        deadline = time.time() + timeout
        last_version = -1
        while True:
            # With something to settle the claim runs anyway: no need to look for news first
            # (-1 makes the next turn claim again if this one found nothing).
            version = self.db.data_version() if first is None else -1
            now = time.time()
            # Only claim when someone committed since our last look or a delayed/leased row
            # came due: an idle worker then costs one counter read per polling interval.
            if version != last_version or now >= self._next_due or first is not None:
                last_version = version
                got = self._claim(queues, limit, now, first, then)
                first = None
                if got:
                    self._found_at = now
                    return got
            if now >= deadline:
                return []
            pause = self.options.polling_interval
            if now - self._found_at < _BRISK_FOR:  # busy a moment ago: more may come soon
                pause = min(pause, _BRISK_POLL)
            time.sleep(min(pause, max(0.0, deadline - now)))

    def _claim(
        self,
        queues: Sequence[str],
        limit: int,
        now: float,
        first: First | None = None,
        then: Then | None = None,
    ) -> list[Delivery]:
        out: list[Delivery] = []
        dead: list[tuple[int, str, str]] = []
        lease_until = now + self.visibility_timeout
        # Rotate the starting queue so one busy queue cannot starve the others.
        order = list(queues)
        if len(order) > 1:
            self._rotation = (self._rotation + 1) % len(order)
            order = order[self._rotation :] + order[: self._rotation]
        failed_since = self.db.write_failed_since
        try:
            with self.db.write() as conn:
                if first is not None:
                    first(conn)
                spared = 0
                if failed_since is not None:
                    # A renewal due up to a lease before we saw a write fail may have failed too.
                    spared = conn.execute(
                        "UPDATE celeriac_messages SET visible_at = ?"
                        " WHERE state = 2 AND visible_at <= ? AND visible_at > ?",
                        (lease_until, now, failed_since - self.visibility_timeout),
                    ).rowcount
                conn.execute(
                    "UPDATE celeriac_messages SET state = 0 WHERE state > 0 AND visible_at <= ?",
                    (now,),
                )
                for queue in order:
                    self._claim_queue(conn, queue, limit, lease_until, out, dead)
                    if len(out) >= limit:
                        break
                if dead:
                    self._trim_dead(conn, now)
                nxt = conn.execute(
                    "SELECT MIN(visible_at) FROM celeriac_messages WHERE state > 0"
                ).fetchone()[0]
                if then is not None and out:
                    then(conn, out)
        except (sqlite3.Error, BrokerError) as exc:
            raise BrokerError(f"fetch failed: {exc}") from exc
        if failed_since is not None:
            if self.db.write_failed_since == failed_since:  # no newer failure meanwhile
                self.db.write_failed_since = None
            logger.warning(
                "writes to %s succeed again; %d lease(s) that ran out meanwhile were renewed "
                "for their holders",
                self.db.path,
                spared,
            )
        for row_id, queue, reason in dead:
            logger.error("dead-lettered message row %d on %r: %s", row_id, queue, reason)
        self._next_due = float(nxt) if nxt is not None else float("inf")
        return out

    def _claim_queue(
        self,
        conn: sqlite3.Connection,
        queue: str,
        limit: int,
        lease_until: float,
        out: list[Delivery],
        dead: list[tuple[int, str, str]],
    ) -> None:
        """Lease rows of ``queue`` until ``out`` holds ``limit`` or the queue has no more ready;
        rows that are not messages go to the dead letters (and into ``dead``) as they come."""
        while len(out) < limit:
            want = limit - len(out)
            rows = conn.execute(_CLAIM, (lease_until, queue, want)).fetchall()
            # RETURNING has no defined order: hand the batch out in the order it was chosen
            # (priority, then age), as the worker dispatches it in list order.
            rows.sort(key=lambda r: (-_priority(r[8]), r[0]))
            unreadable = 0
            for row in rows:
                msg_id, _queue, count, *columns, _ = row
                try:
                    message = message_of(*columns)
                except UnreadableRow as exc:
                    reason = f"unreadable message row: {exc}"
                    _dead_letter_row(conn, msg_id, reason)
                    dead.append((msg_id, queue, reason))
                    unreadable += 1
                    continue
                out.append(Delivery(message, queue, (msg_id, count), count))
            # Claim again for the places the unreadable rows took, unless the queue ran dry.
            if not unreadable or len(rows) < want:
                return

    def ack(self, deliveries: Sequence[Delivery]) -> None:
        if not deliveries:
            return
        with self.db.write() as conn:
            ack_rows(conn, deliveries)

    def requeue(
        self, delivery: Delivery, *, delay_until: float | None = None, count: bool = True
    ) -> None:
        now = time.time()
        delayed = delay_until is not None and delay_until > now
        with self.db.write() as conn:
            conn.execute(
                "UPDATE celeriac_messages SET state = ?, visible_at = ?,"
                " delivery_count = delivery_count - ? WHERE id = ? AND delivery_count = ?",
                (
                    DELAYED if delayed else READY,
                    delay_until if delayed else now,
                    0 if count else 1,
                    *delivery.tag,
                ),
            )

    def extend(self, deliveries: Sequence[Delivery]) -> None:
        if not deliveries:
            return
        until = time.time() + self.visibility_timeout
        with self.db.write() as conn:
            conn.executemany(
                "UPDATE celeriac_messages SET visible_at = ?"
                " WHERE id = ? AND delivery_count = ? AND state = 2",
                [(until, *d.tag) for d in deliveries],
            )

    def dead_letter(self, delivery: Delivery, reason: str) -> None:
        m = delivery.message
        with self.db.write() as conn:
            deleted = conn.execute(
                "DELETE FROM celeriac_messages WHERE id = ? AND delivery_count = ?", delivery.tag
            ).rowcount
            if not deleted:  # stale: the lease ran out and the message is someone else's now
                return
            conn.execute(
                "INSERT INTO celeriac_dead_letters (queue, reason, failed_at, headers, properties,"
                " content_type, content_encoding, body) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    delivery.queue,
                    reason,
                    time.time(),
                    _dumps(m.headers),
                    _dumps(m.properties),
                    m.content_type,
                    m.content_encoding,
                    m.body,
                ),
            )
            self._trim_dead(conn, time.time())

    def _trim_dead(self, conn: sqlite3.Connection, now: float) -> None:
        opts = self.options
        dead_letters.trim(conn, opts.dead_letter_max_count, opts.dead_letter_max_age, now)

    def reserve_rate_slot(self, key: str, interval: float) -> float | None:
        now = time.time()
        with self.db.write() as conn:
            row = conn.execute(
                "INSERT INTO celeriac_rate_limits (key, next_at) VALUES (?, ? + ?)"
                " ON CONFLICT (key) DO UPDATE SET next_at = MAX(next_at, ?) + ?"
                " RETURNING next_at",
                (key, now, interval, now, interval),
            ).fetchone()
        return float(row[0]) - interval

    # -- administration ---------------------------------------------------------------------
    def purge(self, queue: str) -> int:
        with self.db.write() as conn:
            cur = conn.execute(
                "DELETE FROM celeriac_messages WHERE queue = ? AND state != 2", (queue,)
            )
            return cur.rowcount

    def depth(self, queue: str) -> int:
        [(count,)] = self.db.read(
            "SELECT COUNT(*) FROM celeriac_messages WHERE queue = ?", (queue,)
        )
        return int(count)

    def oldest_age(self, queue: str) -> float | None:
        # A ready row's visible_at is when it became ready (published, due, or given back).
        [(oldest,)] = self.db.read(
            "SELECT MIN(visible_at) FROM celeriac_messages WHERE queue = ? AND state = 0",
            (queue,),
        )
        return 0.0 if oldest is None else max(0.0, time.time() - float(oldest))

    def ready(self, queue: str) -> int:
        [(count,)] = self.db.read(
            "SELECT COUNT(*) FROM celeriac_messages WHERE queue = ? AND state = 0", (queue,)
        )
        return int(count)

    def dead_letters(self, limit: int = 100) -> list[DeadLetter]:
        rows = self.db.read(
            "SELECT id, queue, reason, failed_at, headers, properties, content_type,"
            " content_encoding, body FROM celeriac_dead_letters ORDER BY id LIMIT ?",
            (limit,),
        )
        out = []
        for row_id, queue, reason, failed_at, *columns in rows:
            # Whatever a dead letter holds, it is listed: it is there for a person to look at.
            message, problems = salvage(*columns)
            if problems:
                logger.warning("dead letter %s: stored message is unreadable: %s", row_id, problems)
            out.append(
                DeadLetter(
                    id=row_id,
                    queue=str(queue),
                    reason=str(reason),
                    failed_at=float(failed_at) if isinstance(failed_at, float | int) else 0.0,
                    message=message,
                )
            )
        return out

    def replay_dead_letters(self, ids: Sequence[Any] | None = None) -> int:
        now = time.time()
        where, params = (
            ("", ())
            if ids is None
            else (
                f" WHERE id IN ({','.join('?' * len(ids))})",
                tuple(ids),
            )
        )
        with self.db.write() as conn:
            cur = conn.execute(
                "INSERT INTO celeriac_messages (queue, priority, state, visible_at, headers,"
                " properties, content_type, content_encoding, body)"
                f" SELECT queue, 0, 0, ?, headers, properties, content_type, content_encoding, body"
                f" FROM celeriac_dead_letters{where} ORDER BY id",
                (now, *params),
            )
            moved = cur.rowcount
            conn.execute(f"DELETE FROM celeriac_dead_letters{where}", params)
        return moved

    def purge_dead_letters(self) -> int:
        with self.db.write() as conn:
            return conn.execute("DELETE FROM celeriac_dead_letters").rowcount


def insert_rows(conn: sqlite3.Connection, rows: Sequence[tuple[Any, ...]]) -> None:
    """Insert :meth:`SQLiteBroker.rows` inside the caller's write transaction."""
    conn.executemany(
        "INSERT INTO celeriac_messages (queue, priority, state, visible_at, headers,"
        " properties, content_type, content_encoding, body)"
        " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
        rows,
    )


def ack_rows(conn: sqlite3.Connection, deliveries: Sequence[Delivery]) -> None:
    """Delete acknowledged messages inside the caller's write transaction."""
    # The delivery count is part of the handle: a worker whose lease ran out and was
    # re-delivered elsewhere must not delete the copy the other worker is running.
    conn.executemany(
        "DELETE FROM celeriac_messages WHERE id = ? AND delivery_count = ?",
        [d.tag for d in deliveries],
    )


def _dead_letter_row(conn: sqlite3.Connection, msg_id: int, reason: str) -> None:
    """Move a row to the dead letters as it is stored: nothing is re-encoded, so a replay puts
    back exactly what came in."""
    conn.execute(
        "INSERT INTO celeriac_dead_letters (queue, reason, failed_at, headers, properties,"
        " content_type, content_encoding, body) SELECT queue, ?, ?, headers, properties,"
        " content_type, content_encoding, body FROM celeriac_messages WHERE id = ?",
        (reason, time.time(), msg_id),
    )
    conn.execute("DELETE FROM celeriac_messages WHERE id = ?", (msg_id,))


def _priority(value: object) -> float:
    """A row's priority for ordering its batch; one stored as something else sorts as 0."""
    return value if isinstance(value, int | float) else 0
