"""``celeriac._fork.fork_guard``: a child forked while another thread is inside an SQLite call
must not inherit SQLite's mutexes locked.

Each case runs in a fresh interpreter (forking the test runner would copy its threads' state):
one thread reads an SQLite file in a loop through :class:`SQLiteFile`, the main thread forks
children that each open the file and read it under an alarm (2 s; 10 s with the guard). A
child that hangs is killed by the alarm and counted.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

SCRIPT = textwrap.dedent(
    """
    import os, signal, sys, threading
    from celeriac._fork import fork_guard
    from celeriac.transports.sqlite.connection import SQLiteFile

    path, armed, forks = sys.argv[1], sys.argv[2] == "armed", int(sys.argv[3])
    alarm = 10 if armed else 2
    schema = "CREATE TABLE IF NOT EXISTS t (x INTEGER);"
    db = SQLiteFile(path, schema)
    with db.write() as conn:
        conn.executemany("INSERT INTO t VALUES (?)", [(i,) for i in range(1000)])
    if armed:
        fork_guard.arm()
    stop = threading.Event()
    spins = 0

    def spin():
        global spins
        while not stop.is_set():
            db.read("SELECT count(*), group_concat(x) FROM t")
            spins += 1

    threading.Thread(target=spin, daemon=True).start()
    while spins < 10:
        pass
    hung = done = 0
    for _ in range(forks):
        pid = os.fork()
        if pid == 0:
            signal.alarm(alarm)
            [(n,)] = SQLiteFile(path, schema).read("SELECT count(*) FROM t")
            os._exit(0 if n == 1000 else 3)
        _, status = os.waitpid(pid, 0)
        done += 1
        if os.WIFSIGNALED(status):
            hung += 1
            if not armed:
                break  # shown: the hazard is real here
        elif os.WEXITSTATUS(status) != 0:
            sys.exit(f"child read a wrong count: {status}")
    stop.set()
    print(done, hung)
    """
)


def run(tmp_path: Path, mode: str, forks: int) -> tuple[int, int]:
    out = subprocess.run(
        [sys.executable, "-c", SCRIPT, str(tmp_path / "fork.db"), mode, str(forks)],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    done, hung = out.stdout.split()
    return int(done), int(hung)


def test_unguarded_forks_hang_children(tmp_path):
    # The control: without the guard, the first child to hang ends the run (about every
    # second fork hangs on a 2-core machine).
    done, hung = run(tmp_path, "unarmed", 300)
    assert hung == 1, f"no child hung in {done} unguarded forks: this test shows nothing here"


def test_armed_guard_keeps_every_child_working(tmp_path):
    done, hung = run(tmp_path, "armed", 60)
    assert (done, hung) == (60, 0)
