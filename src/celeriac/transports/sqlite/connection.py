"""One SQLite file shared by threads and processes: connections, transactions, change polling.

Each thread of each process gets its own connection (sqlite3 connections must not cross threads or
a ``fork``). The file runs in WAL mode so readers never block the writer, and writers queue on
``busy_timeout`` instead of failing.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from celeriac._fork import generation
from celeriac.exceptions import BrokerError, CeleriacError, ConfigurationError

BUSY_TIMEOUT_MS = 30_000


def path_from_url(url: str) -> str:
    """``sqlite:///rel.db`` is relative to the working directory, ``sqlite:////abs.db`` absolute."""
    scheme, sep, rest = url.partition("://")
    if not sep or scheme.lower() != "sqlite":
        raise ConfigurationError(f"not an sqlite:// URL: {url!r}")
    path = rest.split("?", 1)[0]
    if path.startswith("/"):
        path = path[1:]
    if not path:
        raise ConfigurationError(f"sqlite URL {url!r} names no file; use sqlite:///file.db")
    return str(Path(path).expanduser().resolve())


class SQLiteFile:
    """Per-thread connections to one database file, with its schema applied once."""

    def __init__(
        self,
        path: str,
        schema: str,
        error: type[CeleriacError] = BrokerError,
        write_lock: WriteLock | None = None,
    ) -> None:
        self.path = path
        self._error = error
        self._schema = schema
        self._write_lock = write_lock or WriteLock()
        self._local = threading.local()
        self._fork_gen = generation()
        Path(path).parent.mkdir(parents=True, exist_ok=True)

    def connection(self) -> sqlite3.Connection:
        if self._fork_gen != generation():  # forked: the parent's connections are not ours
            self._local = threading.local()
            self._fork_gen = generation()
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is None:
            conn = self._open()
            self._local.conn = conn
        return conn

    def _open(self) -> sqlite3.Connection:
        try:
            conn = sqlite3.connect(
                self.path,
                isolation_level=None,
                check_same_thread=False,
                timeout=BUSY_TIMEOUT_MS / 1000,
            )
        except sqlite3.Error as exc:
            raise self._error(f"cannot open SQLite database {self.path}: {exc}") from exc
        deadline = time.monotonic() + BUSY_TIMEOUT_MS / 1000
        delay = 0.005
        while True:
            try:
                self._prepare(conn)
                return conn
            except sqlite3.OperationalError as exc:
                # Switching a new file to WAL needs an exclusive lock, and SQLite reports BUSY
                # for it at once instead of calling the busy handler. Several processes opening
                # a fresh file together (a worker's children and a client) hit that: wait and
                # try again rather than fail the caller.
                if not _is_busy(exc) or time.monotonic() >= deadline:
                    conn.close()
                    raise self._error(f"cannot open SQLite database {self.path}: {exc}") from exc
            except sqlite3.Error as exc:
                conn.close()
                raise self._error(f"cannot open SQLite database {self.path}: {exc}") from exc
            time.sleep(delay)
            delay = min(delay * 2, 0.1)

    def _prepare(self, conn: sqlite3.Connection) -> None:
        conn.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
        mode = conn.execute("PRAGMA journal_mode").fetchone()[0]
        if mode.lower() != "wal":
            conn.execute("PRAGMA journal_mode=WAL")
        # NORMAL in WAL mode: a commit is durable against process crashes; only an OS crash
        # or power loss can lose the last transactions.
        conn.execute("PRAGMA synchronous=NORMAL")
        conn.executescript(self._schema)

    @contextmanager
    def write(self) -> Iterator[sqlite3.Connection]:
        """A write transaction, taken up front so that concurrent writers queue, not deadlock.

        Threads of one process queue on a lock first: SQLite's own busy handler makes a
        waiting writer sleep for whole milliseconds, which on a busy worker (fetcher, finisher
        and renewer all writing) cost more than the transactions themselves.
        """
        conn = self.connection()
        with self._write_lock:
            try:
                conn.execute("BEGIN IMMEDIATE")
            except sqlite3.Error as exc:
                raise self._error(f"SQLite {self.path}: {exc}") from exc
            try:
                yield conn
                conn.execute("COMMIT")
            except BaseException as exc:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                if isinstance(exc, sqlite3.Error):
                    raise self._error(f"SQLite {self.path}: {exc}") from exc
                raise

    def read(self, sql: str, params: tuple[Any, ...] = ()) -> list[Any]:
        """The rows of one query; a failure (a damaged file, say) as this file's error type."""
        try:
            return self.connection().execute(sql, params).fetchall()
        except sqlite3.Error as exc:
            raise self._error(f"SQLite {self.path}: {exc}") from exc

    def data_version(self) -> int:
        """Changes whenever another connection commits: a cheap "anything new?" probe."""
        [(version,)] = self.read("PRAGMA data_version")
        return int(version)

    def close(self) -> None:
        conn = getattr(self._local, "conn", None)
        if conn is not None and self._fork_gen == generation():
            conn.close()
        self._local = threading.local()


class WriteLock:
    """Queues this process's writers to one file, ahead of SQLite's own locking.

    A transport shares one between the broker, backend and beat store it opens on a file.
    After a fork the child takes a fresh lock: a parent thread may have held this one.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._gen = generation()

    def __enter__(self) -> None:
        if self._gen != generation():
            self._lock, self._gen = threading.Lock(), generation()
        self._lock.acquire()

    def __exit__(self, *exc: object) -> None:
        self._lock.release()


def wait_for_change(db: SQLiteFile, last: int, until: float, interval: float) -> int:
    """Sleep in ``interval`` steps until another connection commits or ``until`` passes."""
    while True:
        current = db.data_version()
        if current != last:
            return current
        remaining = until - time.time()
        if remaining <= 0:
            return current
        time.sleep(min(interval, remaining))


def _is_busy(exc: sqlite3.OperationalError) -> bool:
    text = str(exc).lower()
    return "locked" in text or "busy" in text
