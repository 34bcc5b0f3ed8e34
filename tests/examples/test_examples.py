"""The examples under examples/ run as their READMEs say: a real worker process on a private
SQLite file, the Django project's view and the FastAPI endpoint sending tasks to it."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.conftest import wait_for

pytestmark = pytest.mark.e2e

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def start_worker(cwd: Path, env: dict[str, str], log: Path, *args: str) -> subprocess.Popen[bytes]:
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "celeriac", *args, "-l", "info"],
            cwd=cwd,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    wait_for(lambda: b" ready:" in log.read_bytes() or proc.poll() is not None, 30, "worker up")
    assert proc.poll() is None, log.read_text()
    return proc


@pytest.fixture
def stop() -> Iterator[list[subprocess.Popen[bytes]]]:
    procs: list[subprocess.Popen[bytes]] = []
    yield procs
    for proc in procs:
        proc.terminate()
        proc.wait(20)


DJANGO_CLIENT = """
import json, django
django.setup()
from django.test import Client
from proj.celery import app
client = Client()
task_id = client.get("/count/", {"text": "one two three four"}).json()["task_id"]
value = app.AsyncResult(task_id).get(timeout=20)
print(json.dumps({"value": value, "view": client.get(f"/result/{task_id}/").json(),
                  "tasks": sorted(t for t in app.tasks if not t.startswith("celery."))}))
"""


def test_the_django_example_discovers_and_runs_its_tasks(tmp_path, stop):
    pytest.importorskip("django")
    project = EXAMPLES / "django"
    env = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "proj.settings",
        "CELERY_BROKER_URL": f"sqlite:///{tmp_path / 'broker.sqlite3'}",
        "PYTHONPATH": str(project),
    }
    worker = start_worker(project, env, tmp_path / "worker.log", "-A", "proj", "worker")
    stop.append(worker)
    run = subprocess.run(
        [sys.executable, "-c", DJANGO_CLIENT],
        cwd=project,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert run.returncode == 0, run.stderr
    out = json.loads(run.stdout)
    assert out["value"] == 4
    assert out["view"] == {"state": "SUCCESS", "value": 4}
    assert out["tasks"] == ["polls.tasks.count_words"]  # found by autodiscover_tasks()
    assert "polls.tasks.count_words" in (tmp_path / "worker.log").read_text()


def test_the_fastapi_example_awaits_an_async_task(tmp_path, stop, monkeypatch):
    pytest.importorskip("fastapi")
    from fastapi.testclient import TestClient

    project = EXAMPLES / "fastapi"
    url = f"sqlite:///{tmp_path / 'broker.sqlite3'}"
    env = {**os.environ, "CELERIAC_BROKER_URL": url}
    argv = ["-A", "main", "worker", "-P", "asyncio"]
    stop.append(start_worker(project, env, tmp_path / "worker.log", *argv))
    monkeypatch.setenv("CELERIAC_BROKER_URL", url)
    spec = importlib.util.spec_from_file_location("main", project / "main.py")
    assert spec is not None and spec.loader is not None
    main = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(main)
    try:
        with TestClient(main.api) as client:
            replies = [client.post(f"/square/{x}").json() for x in (3, 12)]
        assert [r["value"] for r in replies] == [9, 144]
        assert len({r["task_id"] for r in replies}) == 2
    finally:
        main.celery.close()
