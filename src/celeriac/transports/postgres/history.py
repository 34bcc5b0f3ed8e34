"""The history store in PostgreSQL (``--history postgresql://user@host/db?schema=...``).

The same table and rules as :mod:`.sqlite_history`, in a schema of its own (``?schema=`` in
the URL, else :data:`DEFAULT_SCHEMA`), so a dashboard can share a database with the PostgreSQL
transport without touching its tables. The tables are made on first use, in one transaction
under an advisory lock keyed on the schema name: two dashboards starting together make them
once. The number of tasks is kept in ``dash_meta`` by statement-level triggers (``COUNT(*)``
over a large table is a full scan; the list page reads one row).

Connections: a few, kept idle between calls (the recorder's thread writes while Starlette's
threadpool reads), in autocommit mode; a connection that fails (the server restarted) is
thrown away and the call raises :class:`HistoryError`; the next call connects again.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qsl, urlsplit

from celeriac.dashboard.history import (
    COLUMNS,
    Event,
    Finished,
    HistoryError,
    HistoryStore,
    TaskPage,
    TaskQuery,
    TaskRow,
    cursor_of,
    page_filter,
    row_of,
)
from celeriac.events.state import FINISHED
from celeriac.transports.postgres.connection import parse_url, sql
from celeriac.urls import redact

if TYPE_CHECKING:
    import psycopg

#: where the tables live unless the URL says ``?schema=``
DEFAULT_SCHEMA = "celeriac_dashboard"
#: idle connections kept for the next call (more may be open while calls overlap)
KEEP_IDLE = 4

# ``uuid`` and ``name`` compare bytewise (COLLATE "C"), as in SQLite: the keyset order and the
# id-prefix search then do not depend on the database's locale.
TABLES = (
    "CREATE SCHEMA IF NOT EXISTS {s}",
    """CREATE TABLE {s}.dash_tasks (
        uuid        text COLLATE "C" PRIMARY KEY,
        name        text COLLATE "C",
        state       text NOT NULL,
        worker      text,
        queue       text,
        args        text,
        kwargs      text,
        result      text,
        exception   text,
        traceback   text,
        runtime     double precision,
        retries     integer,
        seen_at     double precision NOT NULL,
        sent_at     double precision,
        received_at double precision,
        started_at  double precision,
        finished_at double precision,
        updated_at  double precision NOT NULL
    )""",
    "CREATE INDEX dash_tasks_seen ON {s}.dash_tasks (seen_at, uuid)",
    "CREATE INDEX dash_tasks_state ON {s}.dash_tasks (state, seen_at, uuid)",
    "CREATE INDEX dash_tasks_name ON {s}.dash_tasks (name, seen_at, uuid)",
    "CREATE INDEX dash_tasks_finished ON {s}.dash_tasks (finished_at)"
    " WHERE finished_at IS NOT NULL",
    "CREATE TABLE {s}.dash_meta (key text PRIMARY KEY, value bigint NOT NULL)",
    "INSERT INTO {s}.dash_meta VALUES ('tasks', 0)",
    # Statement-level, over the transition tables: a prune of many rows is one update of the
    # counter, not one per row. An upsert that updates a row inserts none, so it counts 0.
    """CREATE FUNCTION {s}.dash_tasks_added() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN
        UPDATE {s}.dash_meta SET value = value + (SELECT count(*) FROM added)
            WHERE key = 'tasks';
        RETURN NULL;
    END $$""",
    """CREATE FUNCTION {s}.dash_tasks_removed() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN
        UPDATE {s}.dash_meta SET value = value - (SELECT count(*) FROM removed)
            WHERE key = 'tasks';
        RETURN NULL;
    END $$""",
    "CREATE TRIGGER dash_tasks_added AFTER INSERT ON {s}.dash_tasks"
    " REFERENCING NEW TABLE AS added FOR EACH STATEMENT EXECUTE FUNCTION {s}.dash_tasks_added()",
    "CREATE TRIGGER dash_tasks_removed AFTER DELETE ON {s}.dash_tasks"
    " REFERENCING OLD TABLE AS removed FOR EACH STATEMENT"
    " EXECUTE FUNCTION {s}.dash_tasks_removed()",
)

_FINISHED_SQL = "(" + ", ".join(f"'{s}'" for s in sorted(FINISHED)) + ")"
# One event, applied to its task's row: as in sqlite_history.UPSERT (LEAST and GREATEST are
# SQLite's two-argument MIN and MAX).
UPSERT = f"""
INSERT INTO {{s}}.dash_tasks AS t ({", ".join(COLUMNS)})
VALUES ({", ".join(["%s"] * len(COLUMNS))})
ON CONFLICT (uuid) DO UPDATE SET
    name = COALESCE(excluded.name, t.name),
    state = CASE WHEN t.state IN {_FINISHED_SQL} AND excluded.state NOT IN {_FINISHED_SQL}
                 THEN t.state ELSE excluded.state END,
    worker = COALESCE(excluded.worker, t.worker),
    queue = COALESCE(excluded.queue, t.queue),
    args = COALESCE(excluded.args, t.args),
    kwargs = COALESCE(excluded.kwargs, t.kwargs),
    result = COALESCE(excluded.result, t.result),
    exception = COALESCE(excluded.exception, t.exception),
    traceback = COALESCE(excluded.traceback, t.traceback),
    runtime = COALESCE(excluded.runtime, t.runtime),
    retries = COALESCE(excluded.retries, t.retries),
    seen_at = LEAST(t.seen_at, excluded.seen_at),
    sent_at = COALESCE(t.sent_at, excluded.sent_at),
    received_at = COALESCE(excluded.received_at, t.received_at),
    started_at = COALESCE(excluded.started_at, t.started_at),
    finished_at = COALESCE(excluded.finished_at, t.finished_at),
    updated_at = GREATEST(t.updated_at, excluded.updated_at)
"""
INSERT = (
    f"INSERT INTO {{s}}.dash_tasks ({', '.join(COLUMNS)})"
    f" VALUES ({', '.join(['%s'] * len(COLUMNS))})"
)


def history_url(url: str) -> tuple[str, str]:
    """libpq's URL and the schema for ``url``: :data:`DEFAULT_SCHEMA` unless it says one."""
    has_schema = any(k == "schema" for k, _ in parse_qsl(urlsplit(url).query))
    if not has_schema:
        url += ("&" if urlsplit(url).query else "?") + f"schema={DEFAULT_SCHEMA}"
    return parse_url(url)


class PostgresHistory(HistoryStore):
    def __init__(self, url: str) -> None:
        self.url = url
        self.conninfo, self.schema = history_url(url)
        self._lock = threading.Lock()
        self._idle: list[psycopg.Connection[Any]] = []
        self._closed = False
        with self._connection("making the history's tables") as conn:
            ensure(conn, self.schema)

    def _sql(self, text: str) -> str:
        return sql(text, self.schema)

    # -- connections ----------------------------------------------------------------------------
    @contextmanager
    def _connection(self, what: str) -> Iterator[psycopg.Connection[Any]]:
        """An idle connection (or a new one) for one call; a failure as :class:`HistoryError`."""
        import psycopg

        with self._lock:
            if self._closed:
                raise HistoryError(f"the history at {redact(self.url)} was closed")
            conn = self._idle.pop() if self._idle else None
        try:
            if conn is None:
                conn = psycopg.connect(self.conninfo, autocommit=True)
            yield conn
        except psycopg.Error as exc:
            if conn is not None and (isinstance(exc, psycopg.OperationalError) or conn.broken):
                conn.close()  # the server or the network failed: the next call connects again
                conn = None
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            raise HistoryError(f"{what} on {redact(self.url)}: {first}") from exc
        finally:
            if conn is not None:
                self._put_back(conn)

    def _put_back(self, conn: psycopg.Connection[Any]) -> None:
        with self._lock:
            if not self._closed and not conn.closed and len(self._idle) < KEEP_IDLE:
                self._idle.append(conn)
                return
        conn.close()

    # -- the store ------------------------------------------------------------------------------
    def record(self, events: Sequence[Event]) -> int:
        now = time.time()
        rows = [r for r in (row_of(e, now) for e in events) if r is not None]
        if rows:
            with self._connection("recording events") as conn, conn.transaction():
                conn.cursor().executemany(self._sql(UPSERT), rows)
        return len(rows)

    def insert_rows(self, rows: Sequence[TaskRow]) -> None:
        """Store rows as they are (benchmarks and imports)."""
        with self._connection("inserting rows") as conn, conn.transaction():
            conn.cursor().executemany(
                self._sql(INSERT), [tuple(getattr(r, c) for c in COLUMNS) for r in rows]
            )

    def page(self, query: TaskQuery) -> TaskPage:
        where, params = page_filter(query, "%s", "ILIKE")
        text = f"SELECT {', '.join(COLUMNS)} FROM {{s}}.dash_tasks"
        if where:
            text += " WHERE " + " AND ".join(where)
        text += " ORDER BY seen_at DESC, uuid DESC LIMIT %s"
        params.append(query.limit + 1)
        with self._connection("reading a page of tasks") as conn:
            rows = [TaskRow(*r) for r in conn.execute(self._sql(text), params).fetchall()]
        more = len(rows) > query.limit
        rows = rows[: query.limit]
        return TaskPage(rows, cursor_of(rows[-1]) if more and rows else "")

    def get(self, uuid: str) -> TaskRow | None:
        text = f"SELECT {', '.join(COLUMNS)} FROM {{s}}.dash_tasks WHERE uuid = %s"
        with self._connection("reading a task") as conn:
            row = conn.execute(self._sql(text), (uuid,)).fetchone()
        return TaskRow(*row) if row else None

    def count(self) -> int:
        with self._connection("counting tasks") as conn:
            row = conn.execute(
                self._sql("SELECT value FROM {s}.dash_meta WHERE key = 'tasks'")
            ).fetchone()
        return int(row[0]) if row else 0

    def finished_since(self, since: float) -> list[Finished]:
        with self._connection("reading finished tasks") as conn:
            rows = conn.execute(
                self._sql(
                    "SELECT finished_at, runtime, state FROM {s}.dash_tasks"
                    " WHERE finished_at >= %s ORDER BY finished_at"
                ),
                (since,),
            ).fetchall()
        return [Finished(float(at), runtime, str(state)) for at, runtime, state in rows]

    def prune(self, older_than: float) -> int:
        with self._connection("pruning tasks") as conn:
            cur = conn.execute(
                self._sql("DELETE FROM {s}.dash_tasks WHERE seen_at < %s"), (older_than,)
            )
            return cur.rowcount

    def close(self) -> None:
        with self._lock:
            self._closed = True
            idle, self._idle = self._idle, []
        for conn in idle:
            conn.close()


def ensure(conn: psycopg.Connection[Any], schema: str) -> None:
    """Make the tables unless they exist, once however many dashboards start together."""
    if _exists(conn, schema):
        return
    with conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(hashtext(%s))", (f"celeriac:{schema}",))
        if _exists(conn, schema):  # another dashboard made them while we waited
            return
        for text in TABLES:
            conn.execute(sql(text, schema))


def _exists(conn: psycopg.Connection[Any], schema: str) -> bool:
    # pg_tables, not to_regclass(), as transports/postgres/schema.py explains: the catalog query
    # sees a table another session committed while this one waited for the lock.
    found = conn.execute(
        "SELECT 1 FROM pg_tables WHERE schemaname = %s AND tablename = 'dash_meta'", (schema,)
    ).fetchone()
    return found is not None
