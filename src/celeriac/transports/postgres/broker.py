"""Leased delivery over one PostgreSQL table (``{schema}.messages``).

A claim is one statement: ``SELECT ... FOR UPDATE SKIP LOCKED`` picks up to ``limit`` ready rows
(``available_at <= now``) by priority then age, and the ``UPDATE ... RETURNING`` around it leases
them (``available_at`` becomes the lease's end) and hands them back. Workers claiming together
skip each other's rows instead of waiting on them. A lease that lapses needs no sweep: its row is
ready again by the same test. The claim's last row says when the next delayed or leased message
of those queues comes due, so an idle fetch sleeps exactly until then.

Idle fetches wait on ``LISTEN``: a publish of a ready message sends ``NOTIFY`` with its queue
name in the same transaction (delivered on commit), and a fetch wakes for its own queues. With
nothing published an idle worker claims once per ``polling_interval`` (2 s) at most.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from celeriac.brokers.base import Broker, DeadLetter, Delivery
from celeriac.exceptions import BrokerError, ConfigurationError, PublishRefused
from celeriac.protocol import fastjson
from celeriac.protocol.jsontext import encoder
from celeriac.protocol.publication import Publication
from celeriac.transports.postgres.connection import Database
from celeriac.transports.postgres.options import PostgresOptions
from celeriac.transports.sqlite.rows import UnreadableRow, message_of, salvage

if TYPE_CHECKING:
    import psycopg

logger = logging.getLogger("celeriac.broker.postgres")

# One statement for any number of rows (one round trip, and in autocommit one transaction);
# the NOTIFY for their queues is delivered when it commits.
_INSERT = """
WITH ins AS (
    INSERT INTO {s}.messages (queue, priority, available_at, task_id, headers, properties,
                              content_type, content_encoding, body)
    SELECT * FROM unnest(%s::text[], %s::int[], %s::float8[], %s::text[], %s::text[],
                         %s::text[], %s::text[], %s::text[], %s::bytea[])
    RETURNING queue
)
SELECT pg_notify(%s, q) FROM (SELECT DISTINCT queue AS q FROM ins) AS d
"""

# The claim, then one row (id NULL) whose last column says when the next timed row of these
# queues is due.
_CLAIM = """
WITH picked AS (
    SELECT id FROM {s}.messages
     WHERE queue = ANY(%(queues)s) AND available_at <= %(now)s
     ORDER BY priority DESC, id
     LIMIT %(limit)s
       FOR UPDATE SKIP LOCKED
), leased AS (
    UPDATE {s}.messages m
       SET available_at = %(until)s, leased = true, delivery_count = m.delivery_count + 1
      FROM picked WHERE m.id = picked.id
    RETURNING m.id, m.queue, m.delivery_count, m.headers, m.properties, m.content_type,
              m.content_encoding, m.body, m.priority, {stored}
)
SELECT * FROM leased
UNION ALL
SELECT NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL,
       (SELECT min(available_at) FROM {s}.messages
         WHERE queue = ANY(%(queues)s) AND available_at > %(now)s)::text
"""
#: what the claim returns as each task's stored result state, when results are in this schema
#: ('' when none is stored; NULL when the row has no task id to look for: a replayed dead letter)
STORED_STATE = (
    "CASE WHEN m.task_id IS NULL THEN NULL"
    " ELSE COALESCE((SELECT r.status FROM {s}.results r WHERE r.task_id = m.task_id"
    " AND (r.expires_at IS NULL OR r.expires_at > %(now)s)), '') END"
)

_DEAD = """
INSERT INTO {s}.dead_letters (queue, reason, failed_at, headers, properties, content_type,
                              content_encoding, body)
"""


@dataclass(slots=True)
class _Idle:
    """A thread's last empty claim: on which connection and queues, and when to look again
    without a NOTIFY (the next timed row's due time, or the polling interval)."""

    conn: object
    queues: list[str]
    next_look: float


#: Headers and properties as columns: json.dumps(obj, separators=(",", ":"), default=str), or
#: orjson's text of a plain value (the same value).
_dumps = fastjson.text_encoder(encoder(separators=(",", ":"), default=str))


class PostgresBroker(Broker):
    """Leased delivery over PostgreSQL (``broker_transport_options``:
    :class:`.options.PostgresOptions`)."""

    options_class = PostgresOptions
    options: PostgresOptions

    def __init__(
        self, url: str, transport_options: dict[str, Any] | None = None, *, db: Database
    ) -> None:
        super().__init__(url, transport_options)
        self.db = db
        self.queue_channel = db.channel("q")
        self._insert = db.sql(_INSERT)
        self._claim_sql = db.sql(_CLAIM.replace("{stored}", "NULL::text"))
        #: per thread: what its last empty claim found (see :meth:`fetch`)
        self._idle = threading.local()

    def read_results(self) -> None:
        """Claims return each task's stored state (results live in this schema too)."""
        self._claim_sql = self.db.sql(_CLAIM.replace("{stored}", STORED_STATE))

    # -- publishing -------------------------------------------------------------------------
    def publish(self, publication: Publication) -> None:
        self.publish_many([publication])

    def publish_many(self, publications: Sequence[Publication]) -> None:
        """All in one statement: a group of any size costs one round trip and one commit."""
        rows = self.rows(publications)
        try:
            with self.db.cursor(BrokerError, "publish") as cur:
                self.insert(cur, rows)
        except BrokerError as exc:
            import psycopg

            if isinstance(exc.__cause__, psycopg.IntegrityError | psycopg.DataError):
                queues = ", ".join(map(repr, sorted({p.route.name for p in publications})))
                raise PublishRefused(f"publish to {queues} refused: {exc}") from exc
            raise

    def publish_in(self, conn: Any, publications: Sequence[Publication]) -> None:
        """Insert ``publications`` through the caller's psycopg connection ``conn``, inside its
        open transaction (see :mod:`celeriac.transactional`): they are sent if it commits."""
        import psycopg

        self.db.connection(BrokerError)  # makes the tables on first use, on our own connection
        info = getattr(conn, "info", None)
        if not isinstance(conn, psycopg.Connection) or info is None:
            raise ConfigurationError(
                f"transaction= takes a psycopg connection, not {type(conn).__name__}"
            )
        if info.dbname != self.db.dbname:
            raise ConfigurationError(
                f"transaction= is a connection to database {info.dbname!r}; the broker's "
                f"messages are in {self.db.dbname!r}"
            )
        rows = self.rows(publications)
        try:
            with conn.cursor() as cur:
                self.insert(cur, rows)
        except psycopg.Error as exc:
            raise BrokerError(f"publish in the caller's transaction: {exc}") from exc

    def rows(self, publications: Sequence[Publication]) -> list[list[Any]]:
        """The columns of the message rows for ``publications`` (a row per queue each
        reaches), for :meth:`insert`."""
        now = time.time()
        cols: list[list[Any]] = [[] for _ in range(9)]
        queues, prios, ats, tids, heads, props, ctypes, cencs, bodies = cols
        for p in publications:
            m, eta = p.message, p.eta
            at = eta if eta is not None and eta > now else now
            head, prop = _dumps(m.headers), _dumps(m.properties)
            for queue in self.local_targets(p.route):
                queues.append(queue)
                prios.append(p.priority)
                ats.append(at)
                tids.append(m.task_id)
                heads.append(head)
                props.append(prop)
                ctypes.append(m.content_type)
                cencs.append(m.content_encoding)
                bodies.append(m.body)
        return cols

    def insert(self, cur: psycopg.Cursor[Any], rows: list[list[Any]]) -> None:
        """Insert :meth:`rows` inside the caller's transaction (``cur``'s, or a statement of
        its own in autocommit), and wake the fetches waiting on their queues when it commits
        (a delayed message's too: a waiting fetch learns its due time)."""
        cur.execute(self._insert, (*rows, self.queue_channel))

    # -- consuming --------------------------------------------------------------------------
    def fetch(self, queues: Sequence[str], limit: int, *, timeout: float) -> list[Delivery]:
        self.refuse_broadcast(queues)
        if limit <= 0:
            return []
        deadline = time.time() + timeout
        names = list(queues)
        conn = self.db.listen((self.queue_channel,), BrokerError)
        idle: _Idle | None = getattr(self._idle, "state", None)
        # A worker calls fetch every half second while idle: claim only when something may
        # have changed since this thread's last empty claim (a NOTIFY for one of its queues, a
        # timed row come due, the polling interval gone by, another connection or queues).
        fresh = idle is None or idle.conn is not conn or idle.queues != names
        while True:
            now = time.time()
            if fresh or idle is None or now >= idle.next_look:
                got, due = self._claim(names, limit)
                if got:
                    self._idle.state = None
                    return got
                now = time.time()
                idle = _Idle(conn, names, min(due, now + self.options.polling_interval))
                self._idle.state = idle
            if now >= deadline:
                return []
            heard = self.db.wait(
                (self.queue_channel,), min(deadline, idle.next_look) - now, BrokerError
            )
            fresh = any(q in names for q in heard)

    def claim_rows(
        self, cur: psycopg.Cursor[Any], queues: list[str], limit: int
    ) -> tuple[list[Delivery], float]:
        """One claim on ``cur``; the deliveries and when the next timed row is due."""
        now = time.time()
        params = {
            "queues": queues,
            "now": now,
            "limit": limit,
            "until": now + self.visibility_timeout,
        }
        rows = cur.execute(self._claim_sql, params).fetchall()
        tail = rows.pop()
        due = float(tail[9]) if tail[9] is not None else float("inf")
        # RETURNING has no defined order: hand the batch out in the order it was chosen.
        rows.sort(key=lambda r: (-r[8], r[0]))
        out: list[Delivery] = []
        for row_id, queue, count, headers, props, ctype, cenc, body, _prio, stored in rows:
            try:
                message = message_of(headers, props, ctype, cenc, bytes(body))
            except UnreadableRow as exc:
                reason = f"unreadable message row: {exc}"
                logger.error("dead-lettered message row %d on %r: %s", row_id, queue, reason)
                with cur.connection.transaction():  # (a savepoint inside the caller's)
                    self._dead_letter_row(cur, row_id, reason)
                continue
            out.append(Delivery(message, queue, (row_id, count), count, stored))
        return out, due

    def _claim(self, queues: list[str], limit: int) -> tuple[list[Delivery], float]:
        # One statement: in autocommit it is its own transaction, one round trip.
        with self.db.cursor(BrokerError, "fetch") as cur:
            return self.claim_rows(cur, queues, limit)

    def ack_and_fetch(
        self, acks: Sequence[Delivery], queues: Sequence[str], limit: int, *, timeout: float
    ) -> list[Delivery]:
        if acks and limit > 0:
            self.refuse_broadcast(queues)
            with self.db.transaction(BrokerError, "ack and fetch", pipeline=True) as cur:
                self.delete(cur, acks)
                got, _ = self.claim_rows(cur, list(queues), limit)
            if got or timeout <= 0:
                return got
            return self.fetch(queues, limit, timeout=timeout)
        return super().ack_and_fetch(acks, queues, limit, timeout=timeout)

    def delete(self, cur: psycopg.Cursor[Any], deliveries: Sequence[Delivery]) -> None:
        """Acknowledge inside the caller's transaction. The delivery count is part of the
        handle: a worker whose lease lapsed and was re-delivered elsewhere must not delete the
        copy the other worker runs."""
        cur.execute(
            self.db.sql(
                "DELETE FROM {s}.messages m USING unnest(%s::bigint[], %s::int[]) AS a(id, n)"
                " WHERE m.id = a.id AND m.delivery_count = a.n"
            ),
            ([d.tag[0] for d in deliveries], [d.tag[1] for d in deliveries]),
        )

    def ack(self, deliveries: Sequence[Delivery]) -> None:
        if deliveries:
            with self.db.cursor(BrokerError, "ack") as cur:
                self.delete(cur, deliveries)

    def requeue(
        self, delivery: Delivery, *, delay_until: float | None = None, count: bool = True
    ) -> None:
        now = time.time()
        at = delay_until if delay_until is not None and delay_until > now else now
        with self.db.transaction(BrokerError, "requeue") as cur:
            cur.execute(
                self.db.sql(
                    "UPDATE {s}.messages SET leased = false, available_at = %s,"
                    " delivery_count = delivery_count - %s WHERE id = %s AND delivery_count = %s"
                ),
                (at, 0 if count else 1, *delivery.tag),
            )
            if at == now:
                cur.execute("SELECT pg_notify(%s, %s)", (self.queue_channel, delivery.queue))

    def extend(self, deliveries: Sequence[Delivery]) -> None:
        if not deliveries:
            return
        with self.db.cursor(BrokerError, "extend leases") as cur:
            cur.execute(
                self.db.sql(
                    "UPDATE {s}.messages m SET available_at = %s"
                    " FROM unnest(%s::bigint[], %s::int[]) AS a(id, n)"
                    " WHERE m.id = a.id AND m.delivery_count = a.n AND m.leased"
                ),
                (
                    time.time() + self.visibility_timeout,
                    [d.tag[0] for d in deliveries],
                    [d.tag[1] for d in deliveries],
                ),
            )

    def dead_letter(self, delivery: Delivery, reason: str) -> None:
        m = delivery.message
        with self.db.transaction(BrokerError, "dead-letter") as cur:
            cur.execute(
                self.db.sql("DELETE FROM {s}.messages WHERE id = %s AND delivery_count = %s"),
                delivery.tag,
            )
            if not cur.rowcount:  # stale: the lease lapsed and the message is someone else's
                return
            cur.execute(
                self.db.sql(_DEAD + " VALUES (%s, %s, %s, %s, %s, %s, %s, %s)"),
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
            self._trim_dead(cur)

    def _dead_letter_row(self, cur: psycopg.Cursor[Any], row_id: int, reason: str) -> None:
        """Move a row to the dead letters as it is stored (a replay puts back what came in)."""
        cur.execute(
            self.db.sql(
                _DEAD + " SELECT queue, %s, %s, headers, properties, content_type,"
                " content_encoding, body FROM {s}.messages WHERE id = %s"
            ),
            (reason, time.time(), row_id),
        )
        cur.execute(self.db.sql("DELETE FROM {s}.messages WHERE id = %s"), (row_id,))
        self._trim_dead(cur)

    def _trim_dead(self, cur: psycopg.Cursor[Any]) -> None:
        opts = self.options
        now = time.time()
        if opts.dead_letter_max_age:
            cur.execute(
                self.db.sql("DELETE FROM {s}.dead_letters WHERE failed_at < %s"),
                (now - opts.dead_letter_max_age,),
            )
        if opts.dead_letter_max_count:
            [(count,)] = cur.execute(self.db.sql("SELECT count(*) FROM {s}.dead_letters"))
            drop = count - opts.dead_letter_max_count
            if drop > 0:
                cur.execute(
                    self.db.sql(
                        "DELETE FROM {s}.dead_letters WHERE id IN"
                        " (SELECT id FROM {s}.dead_letters ORDER BY id LIMIT %s)"
                    ),
                    (drop,),
                )

    def reserve_rate_slot(self, key: str, interval: float) -> float | None:
        now = time.time()
        with self.db.cursor(BrokerError, "reserve a rate-limit slot") as cur:
            [(next_at,)] = cur.execute(
                self.db.sql(
                    "INSERT INTO {s}.rate_limits AS r (key, next_at) VALUES (%s, %s + %s)"
                    " ON CONFLICT (key) DO UPDATE SET next_at = GREATEST(r.next_at, %s) + %s"
                    " RETURNING next_at"
                ),
                (key, now, interval, now, interval),
            )
        return float(next_at) - interval

    # -- administration ---------------------------------------------------------------------
    def purge(self, queue: str) -> int:
        with self.db.cursor(BrokerError, "purge") as cur:
            cur.execute(
                self.db.sql("DELETE FROM {s}.messages WHERE queue = %s AND NOT leased"), (queue,)
            )
            return cur.rowcount

    def depth(self, queue: str) -> int:
        with self.db.cursor(BrokerError, "depth") as cur:
            [(count,)] = cur.execute(
                self.db.sql("SELECT count(*) FROM {s}.messages WHERE queue = %s"), (queue,)
            )
        return int(count)

    def oldest_age(self, queue: str) -> float | None:
        # A ready row's available_at is when it became ready (published, due, given back or
        # its lease lapsed).
        now = time.time()
        with self.db.cursor(BrokerError, "oldest age") as cur:
            [(oldest,)] = cur.execute(
                self.db.sql(
                    "SELECT min(available_at) FROM {s}.messages"
                    " WHERE queue = %s AND available_at <= %s"
                ),
                (queue, now),
            )
        return 0.0 if oldest is None else max(0.0, now - float(oldest))

    def ready(self, queue: str) -> int:
        with self.db.cursor(BrokerError, "ready") as cur:
            [(count,)] = cur.execute(
                self.db.sql(
                    "SELECT count(*) FROM {s}.messages WHERE queue = %s AND available_at <= %s"
                ),
                (queue, time.time()),
            )
        return int(count)

    def dead_letters(self, limit: int = 100) -> list[DeadLetter]:
        with self.db.cursor(BrokerError, "list dead letters") as cur:
            rows = cur.execute(
                self.db.sql(
                    "SELECT id, queue, reason, failed_at, headers, properties, content_type,"
                    " content_encoding, body FROM {s}.dead_letters ORDER BY id LIMIT %s"
                ),
                (limit,),
            ).fetchall()
        out = []
        for row_id, queue, reason, failed_at, headers, props, ctype, cenc, body in rows:
            message, problems = salvage(headers, props, ctype, cenc, bytes(body))
            if problems:
                logger.warning("dead letter %s: stored message is unreadable: %s", row_id, problems)
            out.append(DeadLetter(row_id, queue, reason, float(failed_at), message))
        return out

    def replay_dead_letters(self, ids: Sequence[Any] | None = None) -> int:
        where, params = (
            ("", ()) if ids is None else (" WHERE id = ANY(%s)", ([int(i) for i in ids],))
        )
        with self.db.transaction(BrokerError, "replay dead letters") as cur:
            cur.execute(
                self.db.sql(
                    "WITH moved AS (DELETE FROM {s}.dead_letters" + where + " RETURNING *)"
                    " INSERT INTO {s}.messages (queue, priority, available_at, task_id, headers,"
                    " properties, content_type, content_encoding, body)"
                    " SELECT queue, 0, %s, NULL, headers, properties, content_type,"
                    " content_encoding, body FROM moved ORDER BY id"
                    " RETURNING queue"
                ),
                (*params, time.time()),
            )
            moved = [row[0] for row in cur.fetchall()]
            for queue in sorted(set(moved)):
                cur.execute("SELECT pg_notify(%s, %s)", (self.queue_channel, queue))
        return len(moved)

    def purge_dead_letters(self) -> int:
        with self.db.cursor(BrokerError, "purge dead letters") as cur:
            cur.execute(self.db.sql("DELETE FROM {s}.dead_letters"))
            return cur.rowcount
