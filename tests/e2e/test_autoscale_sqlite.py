"""``celeriac worker --autoscale 3,1`` on prefork and SQLite: one child at the start, three
while six tasks wait, one again once the queue is empty for the keepalive (1 s here)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from .conftest import HERE, ledger_records, wait_for

pytestmark = pytest.mark.e2e


@pytest.fixture
def tasks(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    monkeypatch.syspath_prepend(str(HERE))
    import autoscale_tasks

    autoscale_tasks.app.conf.update(broker_url=f"sqlite:///{tmp_path / 'b.sqlite3'}")
    autoscale_tasks.app.close()
    yield autoscale_tasks
    autoscale_tasks.app.close()


def _most_at_once(spans: list[tuple[float, float, int]]) -> set[int]:
    """The processes running at the busiest moment (a task's start)."""
    best: set[int] = set()
    for start, _, _ in spans:
        now = {pid for s, e, pid in spans if s <= start < e}
        best = now if len(now) > len(best) else best
    return best


def test_autoscale_grows_with_waiting_work_and_shrinks_when_idle(tmp_path: Path, tasks: Any):
    ledger = tmp_path / "ledger"
    ledger.mkdir()
    queue, node = f"auto-{uuid.uuid4().hex[:8]}", f"auto-{uuid.uuid4().hex[:6]}@e2e"
    env = {k: v for k, v in os.environ.items() if not k.startswith("CELERIAC_")}
    env |= {
        "CELERIAC_BROKER_URL": tasks.app.conf.broker_url,
        "E2E_LEDGER": str(ledger),
        "AUTOSCALE_KEEPALIVE": "1",
        "PYTHONPATH": str(HERE),
    }
    log = tmp_path / "worker.log"
    argv = [sys.executable, "-m", "celeriac", "-A", "autoscale_tasks", "worker", "-P", "prefork"]
    argv += ["--autoscale", "3,1", "-Q", queue, "-n", node, "-l", "info"]
    with open(log, "wb") as out:
        proc = subprocess.Popen(argv, env=env, cwd=tmp_path, stdout=out, stderr=subprocess.STDOUT)
    try:
        wait_for(lambda: b" ready:" in log.read_bytes() or proc.poll() is not None, 30, "ready")
        assert proc.poll() is None, log.read_text()

        def stats() -> dict[str, Any]:
            [reply] = tasks.app.control.broadcast(
                "stats", destination=[node], reply=True, timeout=5.0
            )
            return reply[node]  # type: ignore[no-any-return]

        first = stats()
        assert (len(first["pool"]["processes"]), first["pool"]["max-concurrency"]) == (1, 1)
        assert first["autoscaler"] == {"max": 3, "min": 1, "current": 1, "qty": 0}

        for _ in range(6):
            tasks.nap.apply_async((1.0,), queue=queue)
        wait_for(lambda: len(ledger_records(ledger)) == 6, 40, "six tasks run")
        spans = [(float(s), float(e), int(p.stem)) for p, (s, e) in ledger_records(ledger)]
        pids = {pid for _, _, pid in spans}
        assert (len(pids), len(_most_at_once(spans))) == (3, 3), spans

        def shrunk() -> dict[str, Any] | None:
            now = stats()
            return now if len(now["pool"]["processes"]) == 1 else None

        last = wait_for(shrunk, 20, "the pool back at one child")
        assert isinstance(last, dict)
        assert last["pool"]["max-concurrency"] == 1
        assert last["autoscaler"] == {"max": 3, "min": 1, "current": 1, "qty": 0}
        [grow] = tasks.app.control.broadcast(
            "pool_grow", {"n": 1}, destination=[node], reply=True, timeout=5.0
        )
        assert grow[node] == {
            "error": "pool_grow is not supported with autoscale; adjust the autoscale range "
            "instead",
            "unsupported": True,
        }
        # One step up: the first look saw more work than three children.
        assert "autoscaler: scaling up 2 (work " in log.read_text()
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0, log.read_text()[-3000:]
