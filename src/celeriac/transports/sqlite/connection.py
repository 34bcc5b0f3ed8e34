"""One SQLite file shared by threads and processes: connections, transactions, change polling.

Each thread of each process gets its own connection (sqlite3 connections must not cross threads or
a ``fork``). The file runs in WAL mode so readers never block the writer, and writers queue on
``busy_timeout`` instead of failing.

When writes fail for want of space (a full disk), SQLite cannot copy the WAL back into the
database either, so the WAL keeps everything written since the last checkpoint and never shrinks
on its own. The first write that succeeds again therefore checkpoints it and truncates it
(``PRAGMA wal_checkpoint(TRUNCATE)``), giving the space back.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from celeriac._fork import fork_guard, generation
from celeriac.exceptions import BrokerError, CeleriacError, ConfigurationError
from celeriac.urls import redact

logger = logging.getLogger("celeriac.transport.sqlite")

BUSY_TIMEOUT_MS = 30_000
#: How long the checkpoint after a failed write waits for other connections to let go; it is
#: tried again after a later write when they did not.
CHECKPOINT_BUSY_MS = 1_000
_CHECKPOINT_EVERY = 1.0
#: First and longest step of a writer waiting for another process's (see _begin).
_WAIT_FIRST = 0.00005
_WAIT_MAX = 0.002
_SQLITE_FULL = 13  # sqlite3.SQLITE_FULL from Python 3.11 on


def path_from_url(url: str) -> str:
    """``sqlite:///rel.db`` is relative to the working directory, ``sqlite:////abs.db`` absolute."""
    scheme, sep, rest = url.partition("://")
    if not sep or scheme.lower() != "sqlite":
        raise ConfigurationError(f"not an sqlite:// URL: {redact(url)!r}")
    path = rest.split("?", 1)[0]
    if path.startswith("/"):
        path = path[1:]
    if not path:
        raise ConfigurationError(f"sqlite URL {redact(url)!r} names no file; use sqlite:///file.db")
    return str(Path(path).expanduser().resolve())


class SQLiteFile:
    """Per-thread connections to one database file, with its schema applied once."""

    def __init__(
        self,
        path: str,
        schema: str,
        error: type[CeleriacError] = BrokerError,
        write_lock: WriteLock | None = None,
        upgrade: Callable[[sqlite3.Connection], None] | None = None,
    ) -> None:
        self.path = path
        self._error = error
        self._schema = schema
        #: brings a file made by an older version up to ``schema`` (run on every connection
        #: after it; must be idempotent and safe when several processes run it at once)
        self._upgrade = upgrade
        self._write_lock = write_lock or WriteLock()
        self._local = threading.local()
        self._fork_gen = generation()
        #: When writes began to fail (unix s), for a reason other than a bug: no space, an I/O
        #: error, a lock held past the busy timeout. Left set until its reader clears it (the
        #: broker, once its claim made up for the leases nobody could renew meanwhile).
        self.write_failed_since: float | None = None
        self._checkpoint_owed = False
        self._checkpoint_tried = 0.0
        Path(path).parent.mkdir(parents=True, exist_ok=True)

    def connection(self) -> sqlite3.Connection:
        """This thread's connection. Calls on it belong inside ``with fork_guard:`` (as
        :meth:`read` and :meth:`write` do): see ``celeriac._fork``."""
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
                    raise self._error(
                        f"cannot open SQLite database {self.path}: {describe(exc)}"
                    ) from exc
            except sqlite3.Error as exc:
                conn.close()
                raise self._error(
                    f"cannot open SQLite database {self.path}: {describe(exc)}"
                ) from exc
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
        if self._upgrade is not None:
            self._upgrade(conn)

    @contextmanager
    def write(self) -> Iterator[sqlite3.Connection]:
        """A write transaction, taken up front so that concurrent writers queue, not deadlock.

        Threads of one process queue on a lock first: SQLite's own busy handler makes a
        waiting writer sleep for whole milliseconds, which on a busy worker (fetcher, finisher
        and renewer all writing) cost more than the transactions themselves.
        """
        with fork_guard, self._write_lock:
            conn = self.connection()
            try:
                _begin(conn)
            except sqlite3.Error as exc:
                raise self._failed(exc) from exc
            try:
                yield conn
                conn.execute("COMMIT")
            except BaseException as exc:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                if isinstance(exc, sqlite3.Error):
                    raise self._failed(exc) from exc
                raise
            if self._checkpoint_owed:
                self._checkpoint(conn)

    def read(self, sql: str, params: tuple[Any, ...] = ()) -> list[Any]:
        """The rows of one query; a failure (a damaged file, say) as this file's error type."""
        with fork_guard:
            try:
                return self.connection().execute(sql, params).fetchall()
            except sqlite3.Error as exc:
                raise self._error(f"SQLite {self.path}: {exc}") from exc

    def open(self) -> None:
        """Open this thread's connection now (which applies the schema)."""
        with fork_guard:
            self.connection()

    def data_version(self) -> int:
        """Changes whenever another connection commits: a cheap "anything new?" probe."""
        [(version,)] = self.read("PRAGMA data_version")
        return int(version)

    def _failed(self, exc: sqlite3.Error) -> CeleriacError:
        """Note a failed write and say what it means."""
        if isinstance(exc, sqlite3.OperationalError):
            if self.write_failed_since is None:
                self.write_failed_since = time.time()
            if not _is_busy(exc):
                self._checkpoint_owed = True
        return self._error(f"SQLite {self.path}: {describe(exc)}")

    def _checkpoint(self, conn: sqlite3.Connection) -> None:
        """Writes succeed again after failing: copy the WAL into the database and truncate it
        (it grew while nothing could be copied back). Never fails the write that got here."""
        now = time.monotonic()
        if now - self._checkpoint_tried < _CHECKPOINT_EVERY:
            return
        self._checkpoint_tried = now
        try:
            size = Path(f"{self.path}-wal").stat().st_size
        except OSError:
            size = 0
        try:  # nothing may escape: the caller's write is committed, and must not be retried
            conn.execute(f"PRAGMA busy_timeout={CHECKPOINT_BUSY_MS}")
            try:
                [(busy, _, _)] = conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()
            finally:
                conn.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
        except sqlite3.Error as exc:
            logger.warning("SQLite %s: checkpoint after failed writes failed: %s", self.path, exc)
            return
        if busy:  # a reader or another process's writer held on: after a later write
            logger.info("SQLite %s: checkpoint after failed writes postponed (busy)", self.path)
            return
        self._checkpoint_owed = False
        logger.warning(
            "SQLite %s: writes succeed again; the WAL (%d bytes) was copied into the database "
            "and truncated",
            self.path,
            size,
        )

    def close(self) -> None:
        conn = getattr(self._local, "conn", None)
        if conn is not None and self._fork_gen == generation():
            with fork_guard:
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


def _begin(conn: sqlite3.Connection) -> None:
    """``BEGIN IMMEDIATE``, waiting for another process's writer in steps of 50 us to 2 ms.

    SQLite's own busy handler sleeps 1 ms at first and then longer, while a worker's
    transaction holds the lock for a tenth of that: two prefork children taking turns lost
    most of their time asleep (2-core machine, prefetch 1: 1,000 tasks/s instead of 3,000).
    Waits are bounded by the same busy timeout as SQLite's handler.
    """
    conn.execute("PRAGMA busy_timeout=0")
    try:
        deadline = 0.0
        delay = _WAIT_FIRST
        while True:
            try:
                conn.execute("BEGIN IMMEDIATE")
                return
            except sqlite3.OperationalError as exc:
                if not _is_busy(exc):
                    raise
                now = time.monotonic()
                if not deadline:
                    deadline = now + BUSY_TIMEOUT_MS / 1000
                elif now >= deadline:
                    raise
            time.sleep(delay)
            delay = min(delay * 2, _WAIT_MAX)
    finally:
        conn.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")


def wait_for_change(
    db: SQLiteFile, last: int, until: float, interval: float, first: float | None = None
) -> int:
    """Sleep in ``interval`` steps until another connection commits or ``until`` passes; with
    ``first``, the steps start that short and grow by half each look up to ``interval``, so a
    change that comes soon is seen soon and a long wait still costs few looks."""
    step = interval if first is None else min(first, interval)
    while True:
        current = db.data_version()
        if current != last:
            return current
        remaining = until - time.time()
        if remaining <= 0:
            return current
        time.sleep(min(step, remaining))
        step = min(step * 1.5, interval)


def describe(exc: sqlite3.Error) -> str:
    """SQLite's message, with what it means when the cause is the disk."""
    if _is_full(exc):
        return (
            f"{exc}: no space left on the disk holding it (or the file may grow no more); "
            "writes resume once space is freed"
        )
    return str(exc)


def _is_full(exc: sqlite3.Error) -> bool:
    code = getattr(exc, "sqlite_errorcode", None)  # Python 3.11+
    if code is not None:
        return int(code) & 0xFF == _SQLITE_FULL
    return "disk is full" in str(exc)


def _is_busy(exc: sqlite3.OperationalError) -> bool:
    text = str(exc).lower()
    return "locked" in text or "busy" in text
