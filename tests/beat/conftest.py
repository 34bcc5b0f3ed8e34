"""Real beat processes for the end-to-end tests: one broker per test, logs in tmp_path."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from celeriac import Celeriac
from celeriac.beat.store import BeatStore
from celeriac.transports import open_transport

HERE = Path(__file__).parent


def wait_for(check: Callable[[], object], timeout: float, what: str) -> object:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.02)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


class BeatEnv:
    """A broker URL, the beat processes started on it, and a client app and store."""

    def __init__(self, tmp: Path, url: str) -> None:
        self.tmp = tmp
        self.url = url
        self.env = {
            **os.environ,
            "CELERIAC_BROKER_URL": url,
            "PYTHONPATH": os.pathsep.join([str(HERE), os.environ.get("PYTHONPATH", "")]),
        }
        self.procs: list[subprocess.Popen[bytes]] = []
        self.app = Celeriac("client", broker_url=url, result_backend=None)
        self.store: BeatStore = open_transport(url).beat_store()

    def cli(
        self, *args: str, schedule: str = "none", timeout: float = 20
    ) -> subprocess.CompletedProcess[str]:
        """``celeriac -A beat_app <args>``, to completion."""
        return subprocess.run(
            [sys.executable, str(HERE / "beatcli.py"), "-A", "beat_app", *args],
            env={**self.env, "BEAT_TEST_SCHEDULE": schedule},
            cwd=self.tmp,
            capture_output=True,
            text=True,
            timeout=timeout,
        )

    def start_beat(self, schedule: str) -> subprocess.Popen[bytes]:
        """``celeriac -A beat_app beat -l info``, in the background."""
        n = len(self.procs) + 1
        log = open(self.tmp / f"beat{n}.log", "wb")  # noqa: SIM115 - owned by the process
        proc = subprocess.Popen(
            [sys.executable, str(HERE / "beatcli.py"), "-A", "beat_app", "beat", "-l", "info"],
            env={**self.env, "BEAT_TEST_SCHEDULE": schedule},
            cwd=self.tmp,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        self.procs.append(proc)
        return proc

    def stop_beats(self) -> None:
        """SIGTERM every beat still running, and wait for them to end."""
        for proc in self.procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in self.procs:
            proc.wait(15)

    def leader_pid(self) -> int | None:
        lease = self.store.leader()
        return int(lease.holder.split(":")[1]) if lease else None

    def logs(self) -> str:
        return "\n".join(
            f"--- {p.name}\n{p.read_text(errors='replace')}" for p in sorted(self.tmp.glob("*.log"))
        )

    def depth(self) -> int:
        return self.app.broker.depth("celery")

    def ticks(self) -> list[tuple[str, float, str]]:
        """(entry, tick, task id) of every message beat sent, oldest first (leases them)."""
        out = []
        while True:
            got = self.app.broker.fetch(["celery"], 1000, timeout=0.05)
            if not got:
                break
            out += [
                (d.message.headers["beat_entry"], d.message.headers["beat_tick"], d.message.task_id)
                for d in got
            ]
        return sorted(out, key=lambda x: x[1])

    def close(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGKILL)
                proc.wait(10)
        self.app.close()
        self.store.close()


@pytest.fixture
def sqlite_beats(tmp_path: Path) -> Iterator[BeatEnv]:
    env = BeatEnv(tmp_path, f"sqlite:///{tmp_path / 'broker.sqlite3'}")
    try:
        yield env
    finally:
        env.close()


@pytest.fixture
def redis_beats(tmp_path: Path) -> Iterator[BeatEnv]:
    from tests import redis_support

    prefix = redis_support.new_prefix()
    env = BeatEnv(tmp_path, redis_support.url_with_prefix(prefix))
    try:
        yield env
    finally:
        env.close()
        redis_support.drop(prefix)
