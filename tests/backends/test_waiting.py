"""``wait_for`` (``AsyncResult.get(timeout=T)``) keeps its deadline whatever a backend's reads do:
a read that blocks past it is left behind (backends/base.py), on a real SQLite file held
locked by another process."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from celeriac.backends import ResultBackend, create_backend
from celeriac.backends.base import WAIT_GRACE
from celeriac.exceptions import BackendError

MARGIN = 0.5

LOCK = """
import sqlite3, sys, time
conn = sqlite3.connect(sys.argv[1], isolation_level=None)
conn.execute("PRAGMA locking_mode=EXCLUSIVE")
conn.execute("BEGIN EXCLUSIVE")
conn.execute("UPDATE celeriac_results SET status = status")
print("locked", flush=True)
time.sleep(60)
"""


@pytest.fixture
def results(tmp_path: Path) -> Iterator[tuple[str, list[ResultBackend]]]:
    url = f"sqlite:///{tmp_path}/results.db"
    made: list[ResultBackend] = []
    first = create_backend(url)
    first.store_result("started", None, "STARTED")  # the file, its schema, one row
    first.close()
    yield url, made
    for backend in made:
        backend.close()


def test_a_wait_on_a_file_another_process_holds_locked_ends_on_time(results) -> None:
    url, made = results
    holder = subprocess.Popen(
        [sys.executable, "-c", LOCK, url.removeprefix("sqlite:///")], stdout=subprocess.PIPE
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline() == b"locked\n"
        backend = create_backend(url)
        made.append(backend)
        started = time.monotonic()
        with pytest.raises(BackendError) as info:  # SQLite's busy handler would wait 30 s
            backend.wait_for("started", timeout=1)
        took = time.monotonic() - started
    finally:
        holder.kill()
        holder.wait()
    assert 1 + WAIT_GRACE <= took <= 1 + MARGIN, took
    assert str(info.value) == (
        "waiting for task started: the result backend did not answer within the 1s timeout (+0.25s)"
    )
    backend.store_result("started", 4, "SUCCESS")  # the file is free again
    assert backend.wait_for("started", timeout=5)["result"] == 4


FORKED_WAIT = """
import os, sys
from celeriac.backends import create_backend
url = sys.argv[1]
backend = create_backend(url)
backend.store_result("done", 4, "SUCCESS")
assert backend.wait_for("done", timeout=1)["result"] == 4  # a helper thread now idles
pid = os.fork()
if pid == 0:  # the parent's helper threads are not in the child
    ok = False
    try:
        ok = create_backend(url).wait_for("done", timeout=2)["result"] == 4
    finally:
        os._exit(0 if ok else 1)
_, status = os.waitpid(pid, 0)
print(os.waitstatus_to_exitcode(status))
"""


def test_a_forked_child_waits_with_threads_of_its_own(results) -> None:
    # In a fresh interpreter: forked from the test runner, the child would also inherit
    # whatever the runner's other threads held.
    url, _ = results
    out = subprocess.run(
        [sys.executable, "-c", FORKED_WAIT, url], capture_output=True, text=True, timeout=60
    )
    assert (out.returncode, out.stdout, out.stderr) == (0, "0\n", "")
