"""The reason a prefork child was killed for: the first one is kept."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from celeriac import Celeriac
from celeriac.worker.custody import Death
from celeriac.worker.supervisor import Supervisor
from celeriac.worker.worker import Worker


@pytest.fixture
def supervisor(tmp_path: Path) -> Iterator[Supervisor]:
    app = Celeriac("kill", broker=f"sqlite:///{tmp_path / 'b.sqlite3'}")
    try:
        yield Supervisor(Worker(app, pool="prefork", concurrency=1))
    finally:
        app.close()


@pytest.fixture
def victim() -> Iterator[subprocess.Popen[bytes]]:
    """A process standing in for a child, for the supervisor to kill."""
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        yield proc
    finally:
        proc.kill()
        proc.wait()


def test_a_time_limit_kill_after_a_revoke_keeps_the_revoke_as_the_reason(
    supervisor: Supervisor, victim: subprocess.Popen[bytes]
) -> None:
    supervisor._killed[0] = (Death.REVOKED, "task-1")  # terminate() got there first
    supervisor._kill(0, victim.pid, Death.TIME_LIMIT, "hard time limit exceeded")
    assert victim.wait(10) == -9
    assert supervisor._killed[0] == (Death.REVOKED, "task-1")


def test_a_kill_records_its_reason_when_there_is_none(
    supervisor: Supervisor, victim: subprocess.Popen[bytes]
) -> None:
    supervisor._kill(0, victim.pid, Death.MEMORY, "over max_memory_per_child")
    assert victim.wait(10) == -9
    assert supervisor._killed[0] == (Death.MEMORY, "over max_memory_per_child")
