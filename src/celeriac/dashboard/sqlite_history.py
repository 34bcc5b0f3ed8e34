"""The history store in one SQLite file (WAL: the recorder writes while pages read).

One row per task; indexes serve the list (``seen_at``), its filters by state and by name, and
the charts (``finished_at``). Each event is one upsert whose ``CASE`` keeps a finished state,
so a batch of events is one ``executemany`` in one transaction.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

from celeriac.dashboard.history import (
    COLUMNS,
    Event,
    Finished,
    HistoryStore,
    TaskPage,
    TaskQuery,
    TaskRow,
    cursor_of,
    page_filter,
    row_of,
)
from celeriac.events.state import FINISHED
from celeriac.exceptions import ConfigurationError

SCHEMA = """
CREATE TABLE IF NOT EXISTS dash_tasks (
    uuid        TEXT PRIMARY KEY,
    name        TEXT,
    state       TEXT NOT NULL,
    worker      TEXT,
    queue       TEXT,
    args        TEXT,
    kwargs      TEXT,
    result      TEXT,
    exception   TEXT,
    traceback   TEXT,
    runtime     REAL,
    retries     INTEGER,
    seen_at     REAL NOT NULL,
    sent_at     REAL,
    received_at REAL,
    started_at  REAL,
    finished_at REAL,
    updated_at  REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS dash_tasks_seen ON dash_tasks (seen_at, uuid);
CREATE INDEX IF NOT EXISTS dash_tasks_state ON dash_tasks (state, seen_at, uuid);
CREATE INDEX IF NOT EXISTS dash_tasks_name ON dash_tasks (name, seen_at, uuid);
CREATE INDEX IF NOT EXISTS dash_tasks_finished ON dash_tasks (finished_at)
    WHERE finished_at IS NOT NULL;
-- The number of tasks, kept by triggers: COUNT(*) over a million rows took 76 ms of the
-- list page's 113 (bench/dashboard_history.py); this is one row read.
CREATE TABLE IF NOT EXISTS dash_meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL);
INSERT OR IGNORE INTO dash_meta VALUES ('tasks', (SELECT COUNT(*) FROM dash_tasks));
CREATE TRIGGER IF NOT EXISTS dash_tasks_added AFTER INSERT ON dash_tasks
    BEGIN UPDATE dash_meta SET value = value + 1 WHERE key = 'tasks'; END;
CREATE TRIGGER IF NOT EXISTS dash_tasks_removed AFTER DELETE ON dash_tasks
    BEGIN UPDATE dash_meta SET value = value - 1 WHERE key = 'tasks'; END;
"""

_FINISHED_SQL = "(" + ", ".join(f"'{s}'" for s in sorted(FINISHED)) + ")"
# One event, applied to its task's row. Columns an event does not carry are NULL in it and keep
# their stored value; a finished state is not replaced by an earlier one.
UPSERT = f"""
INSERT INTO dash_tasks ({", ".join(COLUMNS)})
VALUES ({", ".join("?" * len(COLUMNS))})
ON CONFLICT (uuid) DO UPDATE SET
    name = COALESCE(excluded.name, name),
    state = CASE WHEN state IN {_FINISHED_SQL} AND excluded.state NOT IN {_FINISHED_SQL}
                 THEN state ELSE excluded.state END,
    worker = COALESCE(excluded.worker, worker),
    queue = COALESCE(excluded.queue, queue),
    args = COALESCE(excluded.args, args),
    kwargs = COALESCE(excluded.kwargs, kwargs),
    result = COALESCE(excluded.result, result),
    exception = COALESCE(excluded.exception, exception),
    traceback = COALESCE(excluded.traceback, traceback),
    runtime = COALESCE(excluded.runtime, runtime),
    retries = COALESCE(excluded.retries, retries),
    seen_at = MIN(seen_at, excluded.seen_at),
    sent_at = COALESCE(sent_at, excluded.sent_at),
    received_at = COALESCE(excluded.received_at, received_at),
    started_at = COALESCE(excluded.started_at, started_at),
    finished_at = COALESCE(excluded.finished_at, finished_at),
    updated_at = MAX(updated_at, excluded.updated_at)
"""


class SQLiteHistory(HistoryStore):
    def __init__(self, url: str) -> None:
        path = url.partition("://")[2] if "://" in url else url
        if path.startswith("/") and url.startswith("sqlite://"):
            path = path[1:]  # sqlite:///rel.db is relative, sqlite:////abs.db absolute
        if not path:
            raise ConfigurationError(f"history URL {url!r} names no file")
        self.path = str(Path(path).expanduser().resolve())
        self._local = threading.local()
        self._connections: list[sqlite3.Connection] = []
        self._lock = threading.Lock()
        self._conn().executescript(SCHEMA)  # its own transaction

    def _conn(self) -> sqlite3.Connection:
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is None:
            conn = sqlite3.connect(
                self.path, timeout=30.0, isolation_level=None, check_same_thread=False
            )
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=NORMAL")
            self._local.conn = conn
            with self._lock:
                self._connections.append(conn)
        return conn

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        conn = self._conn()
        conn.execute("BEGIN IMMEDIATE")
        try:
            yield conn
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")

    def record(self, events: Sequence[Event]) -> int:
        now = time.time()
        rows = [r for r in (row_of(e, now) for e in events) if r is not None]
        if rows:
            with self._write() as conn:
                conn.executemany(UPSERT, rows)
        return len(rows)

    def insert_rows(self, rows: Sequence[TaskRow]) -> None:
        """Store rows as they are (benchmarks and imports)."""
        with self._write() as conn:
            conn.executemany(
                f"INSERT INTO dash_tasks ({', '.join(COLUMNS)})"
                f" VALUES ({', '.join('?' * len(COLUMNS))})",
                [tuple(getattr(r, c) for c in COLUMNS) for r in rows],
            )

    def page(self, query: TaskQuery) -> TaskPage:
        where, params = page_filter(query, "?", "LIKE")
        sql = f"SELECT {', '.join(COLUMNS)} FROM dash_tasks"
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += " ORDER BY seen_at DESC, uuid DESC LIMIT ?"
        params.append(query.limit + 1)
        rows = [TaskRow(*r) for r in self._conn().execute(sql, params)]
        more = len(rows) > query.limit
        rows = rows[: query.limit]
        return TaskPage(rows, cursor_of(rows[-1]) if more and rows else "")

    def get(self, uuid: str) -> TaskRow | None:
        row = (
            self._conn()
            .execute(f"SELECT {', '.join(COLUMNS)} FROM dash_tasks WHERE uuid = ?", (uuid,))
            .fetchone()
        )
        return TaskRow(*row) if row else None

    def count(self) -> int:
        [(n,)] = self._conn().execute("SELECT value FROM dash_meta WHERE key = 'tasks'").fetchall()
        return int(n)

    def finished_since(self, since: float) -> list[Finished]:
        rows = self._conn().execute(
            "SELECT finished_at, runtime, state FROM dash_tasks"
            " WHERE finished_at >= ? ORDER BY finished_at",
            (since,),
        )
        return [Finished(float(at), runtime, str(state)) for at, runtime, state in rows]

    def prune(self, older_than: float) -> int:
        with self._write() as conn:
            return conn.execute("DELETE FROM dash_tasks WHERE seen_at < ?", (older_than,)).rowcount

    def close(self) -> None:
        with self._lock:
            connections, self._connections = self._connections, []
        for conn in connections:
            conn.close()
        self._local = threading.local()
