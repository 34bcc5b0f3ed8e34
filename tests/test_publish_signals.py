"""Celery's publish signals: sent around every publish, by clients, workers and beat alike."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

import pytest

from celeriac import Celeriac, chain, group, signals
from celeriac.worker import Worker


@pytest.fixture
def app() -> Iterator[Celeriac]:
    app = Celeriac("signals_tests", broker_url="memory://")

    @app.task(name="add")
    def add(x: int, y: int) -> int:
        return x + y

    yield app
    app.close()


@pytest.fixture
def heard() -> Iterator[list[tuple[str, dict[str, Any]]]]:
    seen: list[tuple[str, dict[str, Any]]] = []

    def before(sender: str, **kw: Any) -> None:
        kw["headers"]["x-stamped"] = "yes"  # Celery lets a receiver change the headers
        seen.append(("before", {"sender": sender, **kw}))

    def after(sender: str, **kw: Any) -> None:
        seen.append(("after", {"sender": sender, **kw}))

    signals.before_task_publish.connect(before)
    signals.after_task_publish.connect(after)
    yield seen
    signals.before_task_publish.disconnect(before)
    signals.after_task_publish.disconnect(after)


def test_a_delay_is_announced_before_and_after_with_celerys_arguments(
    app: Celeriac, heard: list[tuple[str, dict[str, Any]]]
) -> None:
    result = app.tasks["add"].delay(2, 3)
    assert [kind for kind, _ in heard] == ["before", "after"]
    before = heard[0][1]
    assert before["sender"] == "add"
    assert before["body"][:2] == ([2, 3], {})
    assert (before["exchange"], before["routing_key"]) == ("", "celery")
    assert before["headers"]["id"] == result.id
    [delivery] = app.broker.fetch(["celery"], 1, timeout=1)
    assert delivery.message.headers["x-stamped"] == "yes"  # the change went out


def test_workflows_and_the_steps_a_worker_sends_are_announced(
    app: Celeriac, heard: list[tuple[str, dict[str, Any]]]
) -> None:
    add = app.tasks["add"]
    group(add.s(i, i) for i in range(3)).apply_async()
    assert [kind for kind, _ in heard] == ["before"] * 3 + ["after"] * 3
    heard.clear()
    worker = Worker(app, pool="threads", concurrency=1, install_signal_handlers=False)
    thread = threading.Thread(target=worker.start, daemon=True)
    thread.start()
    try:
        assert worker.ready.wait(10)
        assert chain(add.s(1, 2), add.s(10)).apply_async().get(timeout=10) == 13
    finally:
        worker.stop()
        thread.join(10)
    # the chain's first step from this client, its second from the worker
    befores = [kw for kind, kw in heard if kind == "before"]
    assert [kw["body"][0] for kw in befores] == [[1, 2], [3, 10]]
