"""Events on SQLite with a real worker: the events command's --dump and live view, the receiver.

One worker (prefork, children consume, ``-E``) serves every test here.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from celeriac.events import EventReceiver

from .conftest import HERE, Env, wait_for
from .events_support import task_events


@pytest.fixture(scope="module")
def sqlite_worker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    env = Env(tmp_path_factory.mktemp("events-sqlite"))
    try:
        env.start_worker("-E", "-c", "2", name="sq")
        yield env
    finally:
        env.close()


@pytest.fixture
def client(sqlite_worker: Env, monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    monkeypatch.syspath_prepend(str(HERE))
    import e2e_tasks

    e2e_tasks.app.conf.update(broker_url=sqlite_worker.url, result_backend=None)
    e2e_tasks.app.close()
    yield e2e_tasks
    e2e_tasks.app.close()


def _events_cli(env: Env, *args: str) -> list[str]:
    return [sys.executable, "-m", "celeriac", "-A", "e2e_tasks:app", "events", *args]


def test_dump_and_receiver_see_the_task_events(sqlite_worker: Env, client: Any) -> None:
    out = sqlite_worker.tmp / f"dump-{uuid.uuid4().hex[:6]}.jsonl"
    with open(out, "wb") as sink:
        dump = subprocess.Popen(
            _events_cli(sqlite_worker, "--dump", "--timeout", "30"),
            env=sqlite_worker.env,
            stdout=sink,
            stderr=subprocess.STDOUT,
            cwd=sqlite_worker.tmp,
        )
    seen: list[dict[str, Any]] = []
    receiver = EventReceiver(client.app, {"*": seen.append})
    try:
        # A heartbeat in the dump: it reads the table from here on.
        wait_for(lambda: b'"worker-heartbeat"' in out.read_bytes(), 15, "a dumped heartbeat")
        result = client.add.delay(20, 22)
        assert result.get(timeout=20) == 42

        def dumped() -> dict[str, dict[str, Any]]:
            lines = out.read_text().splitlines()
            return task_events([json.loads(line) for line in lines], result.id)

        wait_for(lambda: "task-succeeded" in dumped(), 10, "the dumped task-succeeded")
        got = dumped()
        assert got["task-received"]["name"] == "e2e_tasks.add"
        assert got["task-received"]["args"] == "(20, 22)"
        assert got["task-started"]["hostname"] == "sq@e2e"
        assert got["task-succeeded"]["result"] == "42"
        wait_for(
            lambda: (
                receiver.capture(timeout=0.2) >= 0
                and "task-succeeded" in task_events(seen, result.id)
            ),
            10,
            "the receiver's task-succeeded",
        )
        mine = task_events(seen, result.id)
        assert set(mine) == {"task-received", "task-started", "task-succeeded"}
        assert {e["hostname"] for e in mine.values()} == {"sq@e2e"}
    finally:
        receiver.close()
        dump.kill()
        dump.wait(10)


@pytest.mark.skipif(
    shutil.which("tmux") is None and not os.environ.get("CI"),  # CI installs it: never skipped
    reason="tmux is not installed",
)
def test_the_live_view_shows_a_task_reach_success(sqlite_worker: Env, client: Any) -> None:
    socket = f"celeriac-events-{uuid.uuid4().hex[:8]}"  # a tmux server of this test's own
    env_vars = " ".join(
        f"{k}={shlex.quote(sqlite_worker.env[k])}"
        for k in ("CELERIAC_BROKER_URL", "E2E_LEDGER", "PYTHONPATH")
    )
    # Without COLUMNS/LINES (pytest's process sets them to 80x24): the view sizes itself to
    # the pane.
    view = shlex.join(_events_cli(sqlite_worker, "--freq", "0.2"))
    command = f"env -u COLUMNS -u LINES {env_vars} {view}"

    def pane() -> str:
        return subprocess.run(
            ["tmux", "-L", socket, "capture-pane", "-p", "-t", "view"],
            capture_output=True,
            text=True,
            timeout=10,
        ).stdout

    size = ("-x", "200", "-y", "50")
    subprocess.run(
        [
            "tmux",
            "-L",
            socket,
            "new-session",
            "-d",
            "-s",
            "view",
            *size,
            "-c",
            str(sqlite_worker.tmp),
            command,
        ],
        check=True,
        timeout=10,
    )
    try:
        # The worker appears once its next heartbeat lands: the view is reading by then.
        wait_for(lambda: "sq@e2e" in pane() and "online" in pane(), 20, "the worker on screen")
        result = client.add.delay(1, 2)
        assert result.get(timeout=20) == 3
        wait_for(
            lambda: any(
                result.id in line and "e2e_tasks.add" in line and "SUCCESS" in line
                for line in pane().splitlines()
            ),
            15,
            f"a line with {result.id} e2e_tasks.add SUCCESS: {pane()}",
        )
    finally:
        subprocess.run(["tmux", "-L", socket, "kill-server"], timeout=10, check=False)


def test_without_e_a_worker_sends_worker_events_only(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """As Celery's: heartbeats by default, task events only with -E."""
    env = Env(tmp_path)
    monkeypatch.syspath_prepend(str(HERE))
    import e2e_tasks

    e2e_tasks.app.conf.update(broker_url=env.url, result_backend=None)
    e2e_tasks.app.close()
    seen: list[dict[str, Any]] = []
    receiver = EventReceiver(e2e_tasks.app, {"*": seen.append})
    try:
        proc = env.start_worker("-P", "solo", name="plain")
        result = e2e_tasks.add.delay(1, 1)
        assert result.get(timeout=20) == 2
        wait_for(
            lambda: (
                receiver.capture(timeout=0.2) >= 0
                and any(e["type"] == "worker-heartbeat" for e in seen)
            ),
            10,
            "a heartbeat",
        )
        env.stop_worker(proc)
        wait_for(
            lambda: (
                receiver.capture(timeout=0.2) >= 0
                and any(e["type"] == "worker-offline" for e in seen)
            ),
            10,
            "worker-offline",
        )
        kinds = {e["type"] for e in seen}
        assert kinds == {"worker-online", "worker-heartbeat", "worker-offline"}
        offline = next(e for e in seen if e["type"] == "worker-offline")
        assert (offline["hostname"], offline["processed"], offline["active"]) == ("plain@e2e", 1, 0)
    finally:
        receiver.close()
        env.close()
        e2e_tasks.app.close()
