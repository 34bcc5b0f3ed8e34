"""Real worker processes on a schema of their own in the shared PostgreSQL (dropped after)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

from tests import postgres_support

from .conftest import Env, wait_for


class PgEnv(Env):
    """A test's own schema (broker and results both), ledger and workers. Each worker is the
    leader of its own process group, so a test can kill it with all its children."""

    def __init__(self, tmp: Path, url: str | None = None) -> None:
        super().__init__(tmp)
        self.schema = postgres_support.new_schema()
        self.url = url or postgres_support.url_for(self.schema)
        self.env.update(CELERIAC_BROKER_URL=self.url, CELERIAC_RESULT_BACKEND=self.url)

    def start_worker(self, *args: str, name: str | None = None) -> subprocess.Popen[bytes]:
        name = name or f"w{len(self.workers) + 1}"
        log_path = self.tmp / f"{name}.log"
        argv = [sys.executable, "-m", "celeriac", "-A", "e2e_tasks:app", "worker", "-l", "info"]
        with open(log_path, "wb") as log:
            proc = subprocess.Popen(
                [*argv, "-n", f"{name}@e2e", *args],
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=self.tmp,
                start_new_session=True,
            )
        proc.log_path = log_path  # type: ignore[attr-defined]
        self.workers.append(proc)
        wait_for(
            lambda: b" ready:" in log_path.read_bytes() or proc.poll() is not None,
            30,
            f"worker {name} to start",
        )
        assert proc.poll() is None, self.log(proc)
        return proc

    def kill_group(self, proc: subprocess.Popen[bytes]) -> None:
        """SIGKILL the worker and every process of its group (its prefork children)."""
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(10)
        wait_for(lambda: not _group_alive(proc.pid), 10, "the killed worker's children to go")

    def close(self) -> None:
        for proc in self.workers:
            if _group_alive(proc.pid):
                os.killpg(proc.pid, signal.SIGKILL)
            if proc.poll() is None:
                proc.wait(10)
        postgres_support.drop(self.schema)


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True
