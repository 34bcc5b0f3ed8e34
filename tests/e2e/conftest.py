"""Real worker processes on a private SQLite file per test."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

HERE = Path(__file__).parent


def wait_for(check: Callable[[], object], timeout: float, what: str) -> object:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.02)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def ledger_records(ledger: Path) -> list[tuple[Path, list[str]]]:
    """(ledger file, fields) of every complete line: a worker may be writing the last one."""
    out = []
    for path in sorted(ledger.glob("*.log")):
        text = path.read_text()
        for line in text[: text.rfind("\n") + 1].splitlines():
            out.append((path, line.split()))
    return out


def process_tree(root: int) -> str:
    """``pid state command`` of ``root`` and its children, as ``ps`` shows them."""
    out = subprocess.run(
        ["ps", "-o", "pid=,stat=,args=", "--pid", str(root), "--ppid", str(root)],
        capture_output=True,
        text=True,
    )
    return out.stdout


class Env:
    """One test's SQLite broker, ledger and worker processes."""

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.ledger = tmp / "ledger"
        self.ledger.mkdir()
        self.url = f"sqlite:///{tmp / 'broker.sqlite3'}"
        self.env = {
            **os.environ,
            "CELERIAC_BROKER_URL": self.url,
            "E2E_LEDGER": str(self.ledger),
            "PYTHONPATH": f"{HERE}{os.pathsep}{os.environ.get('PYTHONPATH', '')}",
        }
        self.workers: list[subprocess.Popen[bytes]] = []

    def set_vt(self, seconds: float) -> None:
        self.env["E2E_VT"] = str(seconds)

    def start_worker(self, *args: str, name: str | None = None) -> subprocess.Popen[bytes]:
        name = name or f"w{len(self.workers) + 1}"
        log = open(self.tmp / f"{name}.log", "wb")  # noqa: SIM115 - owned by the process
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "celeriac",
                "-A",
                "e2e_tasks:app",
                "worker",
                "-l",
                "info",
                "-n",
                f"{name}@e2e",
                *args,
            ],
            env=self.env,
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=self.tmp,
        )
        proc.log_path = self.tmp / f"{name}.log"  # type: ignore[attr-defined]
        self.workers.append(proc)
        wait_for(
            lambda: b" ready:" in proc.log_path.read_bytes() or proc.poll() is not None,  # type: ignore[attr-defined]
            20,
            f"worker {name} to start",
        )
        assert proc.poll() is None, self.log(proc)
        return proc

    def log(self, proc: subprocess.Popen[bytes]) -> str:
        return proc.log_path.read_text(errors="replace")  # type: ignore[attr-defined, no-any-return]

    def stop_worker(self, proc: subprocess.Popen[bytes], timeout: float = 30) -> int:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
        try:
            return proc.wait(timeout)
        except subprocess.TimeoutExpired:
            # What a hung stop needs to be told apart: which processes are left, and the log.
            raise AssertionError(
                f"worker {proc.pid} still running {timeout}s after SIGTERM; its processes "
                f"left:\n{process_tree(proc.pid)}--- its log:\n{self.log(proc)[-4000:]}"
            ) from None

    def ledger_entries(self, kind: str = "run") -> Counter[str]:
        counts: Counter[str] = Counter()
        for _, (k, task_id, _at) in ledger_records(self.ledger):
            if k == kind:
                counts[task_id] += 1
        return counts

    def close(self) -> None:
        for proc in self.workers:
            if proc.poll() is None:
                proc.kill()
                proc.wait(10)


@pytest.fixture
def e2e(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[Env, object]]:
    """An isolated broker file plus the tasks module bound to it in this (client) process."""
    env = Env(tmp_path)
    monkeypatch.setenv("CELERIAC_BROKER_URL", env.url)
    monkeypatch.setenv("E2E_LEDGER", str(env.ledger))
    monkeypatch.syspath_prepend(str(HERE))
    import e2e_tasks

    e2e_tasks.app.conf.update(broker_url=env.url, result_backend=None)
    e2e_tasks.app.close()
    try:
        yield env, e2e_tasks
    finally:
        env.close()
        e2e_tasks.app.close()
