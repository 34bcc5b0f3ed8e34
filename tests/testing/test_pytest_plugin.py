"""The pytest plugin as a user meets it: installed with celeriac, no ``-p`` option, fixtures
used by a test file of their own (run by pytest in a subprocess)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

WITH_WORKER = """
from celeriac import chain, chord


def test_tasks_run_on_the_worker(celeriac_app, celeriac_worker):
    @celeriac_app.task
    def add(x, y):
        return x + y

    @celeriac_app.task
    def tsum(values):
        return sum(values)

    assert add.delay(2, 3).get(timeout=10) == 5
    assert chain(add.s(1, 1), add.s(10))().get(timeout=10) == 12
    assert chord(add.s(i, i) for i in range(3))(tsum.s()).get(timeout=10) == 6


def test_each_test_has_its_own_app(celeriac_app):
    assert "test_tasks_run_on_the_worker.<locals>.add" not in str(list(celeriac_app.tasks))
"""

EAGER = """
import pytest

ran = []


@pytest.fixture
def celeriac_config():
    return {"task_always_eager": True}


def test_eager_calls_refuse_what_a_broker_would(celeriac_app):
    @celeriac_app.task
    def echo(value):
        ran.append(value)
        return value

    assert echo.delay({"a": [1, 2]}).get() == {"a": [1, 2]}
    with pytest.raises(Exception, match="(?i)json|serializ"):
        echo.delay(object())
    assert ran == [{"a": [1, 2]}]  # the refused call never ran
"""


def test_the_plugin_serves_a_users_test_files(tmp_path: Path) -> None:
    (tmp_path / "test_with_worker.py").write_text(WITH_WORKER)
    (tmp_path / "test_eager.py").write_text(EAGER)
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST_")}
    run = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "no:xdist"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode == 0, run.stdout + run.stderr
    assert "3 passed" in run.stdout, run.stdout
