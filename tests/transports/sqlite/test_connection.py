"""The shared SQLite file: many processes opening a fresh file at once must all get a connection."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

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
