"""The shared SQLite file: many processes opening a fresh file at once must all get a connection."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest

from celeriac.transports.sqlite.connection import SQLiteFile

SCHEMA = "CREATE TABLE IF NOT EXISTS t (id INTEGER PRIMARY KEY, who INTEGER NOT NULL);"

# Each writer is a fresh interpreter (forking the test process would hand it whatever locks the
# test runner's other threads hold), waiting for a start file so that all open the file at once.
WRITER = f"""
import os, sys, time
from celeriac.transports.sqlite.connection import SQLiteFile
path, who, go = sys.argv[1], int(sys.argv[2]), sys.argv[3]
while not os.path.exists(go):
    time.sleep(0.0005)
db = SQLiteFile(path, {SCHEMA!r})
with db.write() as conn:
    conn.execute("INSERT INTO t (who) VALUES (?)", (who,))
"""


def test_processes_opening_a_fresh_file_together_all_succeed(tmp_path: Path) -> None:
    # Many rounds: the race (switching a new file to WAL) showed within ~10 rounds before the fix.
    for round_ in range(20):
        path = str(tmp_path / f"fresh{round_}.sqlite3")
        go = tmp_path / f"go{round_}"
        procs = [
            subprocess.Popen([sys.executable, "-c", WRITER, path, str(i), str(go)])
            for i in range(6)
        ]
        time.sleep(0.3)  # let them start and wait
        go.touch()
        assert [p.wait(30) for p in procs] == [0] * 6
        rows = SQLiteFile(path, SCHEMA).connection().execute("SELECT who FROM t").fetchall()
        assert sorted(r[0] for r in rows) == list(range(6))


def test_waiting_for_a_change_looks_soon_first_then_less_often(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from celeriac.transports.sqlite import connection

    db = SQLiteFile(str(tmp_path / "w.sqlite3"), SCHEMA)
    pauses: list[float] = []
    monkeypatch.setattr(connection.time, "sleep", pauses.append)
    clock = iter(range(100))  # time.time(): one second per look, ten looks in all
    monkeypatch.setattr(connection.time, "time", lambda: float(next(clock)))
    last = db.data_version()
    assert connection.wait_for_change(db, last, 9.5, 0.002, first=0.0001) == last
    assert pauses == pytest.approx([min(0.0001 * 1.5**i, 0.002) for i in range(10)])
    assert pauses[-1] == 0.002 and pauses[0] == 0.0001
