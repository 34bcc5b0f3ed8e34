"""A dashboard process whose history is in PostgreSQL keeps its task list across a restart:
a real worker (-E) on a private SQLite broker, the dashboard run twice with the same
``--history postgresql://...`` (a schema of this test's own, dropped afterwards)."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.postgres_support import postgres_url

from .support import HERE, Stack, get, wait_for

pytestmark = [pytest.mark.e2e, pytest.mark.postgres]


@pytest.fixture
def stack(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Stack]:
    stack = Stack(tmp_path)
    stack.history = postgres_url(request)
    try:
        stack.start_worker()
        stack.start_dashboard()
        yield stack
    finally:
        stack.close()


@pytest.fixture
def tasks(stack: Stack, monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    monkeypatch.syspath_prepend(str(HERE))
    import dash_tasks

    dash_tasks.app.conf.update(broker_url=stack.url)
    dash_tasks.app.close()
    yield dash_tasks
    dash_tasks.app.close()


def _listed(base: str, task_id: str) -> tuple[int, str]:
    """The history's task count and the task's state as the task list shows them."""
    status, body = get(f"{base}/tasks?q={task_id}")
    assert status == 200, body[:500]
    total = re.search(r"(\d+) task\(s\) in the history", body)
    state = re.search(rf'data-task="{task_id}".*?class="state-(\w+)"', body, re.S)
    assert total, body[:500]
    return int(total.group(1)), state.group(1) if state else ""


def test_a_postgres_history_survives_a_dashboard_restart(stack: Stack, tasks: Any) -> None:
    result = tasks.add.apply_async((5, 6), queue=stack.queue)
    assert result.get(timeout=20) == 11
    wait_for(lambda: _listed(stack.base, result.id)[1] == "SUCCESS", 20, "the task, SUCCESS")
    assert _listed(stack.base, result.id) == (1, "SUCCESS")
    assert stack.stop_dashboard() in (0, -15)  # uvicorn re-raises SIGTERM after shutting down
    assert "Traceback" not in stack.log("dashboard")
    stack.start_dashboard()
    assert _listed(stack.base, result.id) == (1, "SUCCESS")
    assert "Traceback" not in stack.log("dashboard")
