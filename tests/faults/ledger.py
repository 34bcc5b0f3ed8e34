"""The ledger: every run of a recording task, kept outside the broker under test.

One SQLite file per test. A recording task inserts a row as it starts (task id, the delivery
count its worker saw, its pid) and sets ``end`` as it returns, so a test can tell lost runs
(no row with an end), duplicates (more than one), which process is running a task (to kill it)
and when things happened. SQLite in WAL mode takes writes from many processes; a process
killed mid-write leaves the file consistent.
"""

from __future__ import annotations

import os
import sqlite3
import threading
import time
from collections import Counter
from pathlib import Path

SCHEMA = """
CREATE TABLE IF NOT EXISTS runs (
    id       INTEGER PRIMARY KEY AUTOINCREMENT,
    task_id  TEXT NOT NULL,
    name     TEXT NOT NULL,
    delivery INTEGER NOT NULL,
    pid      INTEGER NOT NULL,
    start    REAL NOT NULL,
    end      REAL
);
CREATE INDEX IF NOT EXISTS runs_task ON runs (task_id);
"""


def _connect(path: Path | str) -> sqlite3.Connection:
    conn = sqlite3.connect(str(path), timeout=60, isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=NORMAL")
    return conn


class Ledger:
    """Both sides: tasks call :meth:`start`/:meth:`end`, tests read the counts."""

    def __init__(self, path: Path | str) -> None:
        self.path = Path(path)
        self._local = threading.local()  # a connection per thread (threads pool) and process

    @property
    def conn(self) -> sqlite3.Connection:
        local = self._local
        if getattr(local, "conn", None) is None or local.pid != os.getpid():  # not across a fork
            local.conn = _connect(self.path)
            local.conn.executescript(SCHEMA)
            local.pid = os.getpid()
        return local.conn  # type: ignore[no-any-return]

    # -- the recording side (inside tasks) ---------------------------------------------------------
    def start(self, task_id: str | None, name: str, delivery: int) -> int:
        cur = self.conn.execute(
            "INSERT INTO runs (task_id, name, delivery, pid, start) VALUES (?, ?, ?, ?, ?)",
            (task_id or "", name, delivery, os.getpid(), time.time()),
        )
        return int(cur.lastrowid or 0)

    def end(self, row: int) -> None:
        self.conn.execute("UPDATE runs SET end = ? WHERE id = ?", (time.time(), row))

    # -- the reading side (in tests) ---------------------------------------------------------------
    def completed(self) -> Counter[str]:
        """Task id -> runs that reached their end."""
        rows = self.conn.execute(
            "SELECT task_id, COUNT(*) FROM runs WHERE end IS NOT NULL GROUP BY 1"
        )
        return Counter(dict(rows.fetchall()))

    def started(self) -> Counter[str]:
        rows = self.conn.execute("SELECT task_id, COUNT(*) FROM runs GROUP BY 1")
        return Counter(dict(rows.fetchall()))

    def runs(self, task_id: str) -> list[tuple[int, int, float, float | None]]:
        """(delivery, pid, start, end) of each run of ``task_id``, oldest first."""
        rows = self.conn.execute(
            "SELECT delivery, pid, start, end FROM runs WHERE task_id = ? ORDER BY id", (task_id,)
        )
        return list(rows.fetchall())

    def running(self) -> dict[str, int]:
        """Task id -> pid of the runs that started and have not ended (nor died yet)."""
        rows = self.conn.execute("SELECT task_id, pid FROM runs WHERE end IS NULL ORDER BY id")
        return dict(rows.fetchall())

    def pids(self) -> set[int]:
        return {pid for (pid,) in self.conn.execute("SELECT DISTINCT pid FROM runs")}

    def close(self) -> None:
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            conn.close()
            self._local.conn = None
