"""The shared SQLite file: many processes opening a fresh file at once must all get a connection."""

from __future__ import annotations

import multiprocessing
from pathlib import Path

from celeriac.transports.sqlite.connection import SQLiteFile

SCHEMA = "CREATE TABLE IF NOT EXISTS t (id INTEGER PRIMARY KEY, who INTEGER NOT NULL);"


def _open_and_write(path: str, who: int, start: multiprocessing.synchronize.Event) -> None:
    start.wait()
    db = SQLiteFile(path, SCHEMA)
    with db.write() as conn:
        conn.execute("INSERT INTO t (who) VALUES (?)", (who,))


def test_processes_opening_a_fresh_file_together_all_succeed(tmp_path: Path) -> None:
    ctx = multiprocessing.get_context("fork")
    # Many rounds: the race (switching a new file to WAL) showed within ~10 rounds before the fix.
    for round_ in range(60):
        path = str(tmp_path / f"fresh{round_}.sqlite3")
        start = ctx.Event()
        procs = [ctx.Process(target=_open_and_write, args=(path, i, start)) for i in range(6)]
        for p in procs:
            p.start()
        start.set()
        for p in procs:
            p.join(30)
        assert [p.exitcode for p in procs] == [0] * 6
        rows = SQLiteFile(path, SCHEMA).connection().execute("SELECT who FROM t").fetchall()
        assert sorted(r[0] for r in rows) == list(range(6))
