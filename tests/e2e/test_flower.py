"""Flower, the Celery dashboard, run as users run it, shows a Celeriac worker and its tasks.

Flower learns about workers through remote control (``inspect``) and about tasks through
events, so this reads both through Flower's own HTTP API: a real ``celery flower`` process on
the test's Redis key prefix, a real Celeriac worker with ``-E``.
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from .conftest import HERE, wait_for
from .redis_env import RedisEnv

pytestmark = [pytest.mark.redis, pytest.mark.e2e]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _get(url: str) -> Any:
    try:
        with urllib.request.urlopen(url, timeout=10) as reply:
            body = reply.read()
    except (urllib.error.URLError, ConnectionError):
        return None
    return json.loads(body) if body[:1] in (b"{", b"[") else body.decode()


@pytest.fixture(scope="module")
def flower(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[RedisEnv, str]]:
    """A Celeriac worker with task events and Flower watching the same Redis key prefix."""
    env = RedisEnv(tmp_path_factory.mktemp("flower"))
    port = _free_port()
    base = f"http://127.0.0.1:{port}"
    log_path = Path(env.tmp) / "flower.log"
    proc = None
    try:
        env.start_worker("-E", "-c", "2", name="fl1")
        # Flower 2 serves its API without authentication only when told to.
        flower_env = {**env.env, "FLOWER_UNAUTHENTICATED_API": "true"}
        argv = [sys.executable, "-m", "celery", "-A", "celery_tasks", "flower"]
        argv += [f"--port={port}", "--address=127.0.0.1", "--inspect_timeout=3000"]
        with open(log_path, "wb") as log:
            proc = subprocess.Popen(
                argv, env=flower_env, cwd=HERE, stdout=log, stderr=subprocess.STDOUT
            )
        wait_for(
            lambda: _get(f"{base}/healthcheck") == "OK" or proc.poll() is not None,
            30,
            "Flower to serve",
        )
        assert proc.poll() is None, log_path.read_text()
        yield env, base
    finally:
        if proc is not None:
            proc.terminate()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)
        env.close()


@pytest.fixture
def client(flower: tuple[RedisEnv, str], monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    env, _ = flower
    monkeypatch.syspath_prepend(str(HERE))
    import redis_tasks

    redis_tasks.app.conf.update(broker_url=env.url, result_backend=env.url)
    redis_tasks.app.close()
    yield redis_tasks
    redis_tasks.app.close()


def test_flower_lists_the_celeriac_worker(flower: tuple[RedisEnv, str]) -> None:
    _, base = flower
    # refresh=1: Flower asks the workers now (ping, stats, active_queues, registered...).
    workers = wait_for(
        lambda: (w := _get(f"{base}/api/workers?refresh=1")) and "fl1@e2e" in w and w,
        30,
        "Flower to list the worker",
    )
    info = workers["fl1@e2e"]  # type: ignore[index]
    assert "interop.add" in info["registered"]
    assert [q["name"] for q in info["active_queues"]] == ["celery"]
    assert info["stats"]["pool"]["max-concurrency"] == 2


def test_flower_shows_a_task_from_sent_to_success(
    flower: tuple[RedisEnv, str], client: Any
) -> None:
    _, base = flower
    ok = client.add.delay(2, 3)
    failed = client.boom.delay("bad input", 42)
    assert ok.get(timeout=10) == 5

    def task(task_id: str, state: str) -> Any:
        got = _get(f"{base}/api/task/info/{task_id}")
        return got if isinstance(got, dict) and got.get("state") == state else None

    done = wait_for(lambda: task(ok.id, "SUCCESS"), 20, "Flower to see the task succeed")
    assert done["name"] == "interop.add"  # type: ignore[index]
    assert done["args"] == "(2, 3)"  # type: ignore[index]
    assert done["result"] == "5"  # type: ignore[index]
    assert done["worker"] == "fl1@e2e"  # type: ignore[index]
    bad = wait_for(lambda: task(failed.id, "FAILURE"), 20, "Flower to see the task fail")
    assert bad["exception"] == "ValueError('bad input', 42)"  # type: ignore[index]
    listed = _get(f"{base}/api/tasks?workername=fl1@e2e")
    assert set(listed) == {ok.id, failed.id}
