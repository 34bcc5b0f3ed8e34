"""Celery's ways of starting workflows and of naming errbacks, on an in-process worker."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

import pytest

from celeriac import Celeriac, chain, chord, group, signature
from celeriac.exceptions import ChordError
from celeriac.worker import Worker


@pytest.fixture(scope="module")
def app() -> Iterator[Celeriac]:
    app = Celeriac("call_styles", broker_url="memory://")
    seen: dict[str, Any] = {}
    app.seen = seen  # type: ignore[attr-defined]

    @app.task(name="styles.add")
    def add(x: int, y: int) -> int:
        return x + y

    @app.task(name="styles.tsum")
    def tsum(values: list[int]) -> int:
        return sum(values)

    @app.task(name="styles.fail")
    def fail(*args: object) -> None:
        raise ValueError("step failed", len(args))

    @app.task(name="styles.old_errback")
    def old_errback(task_id: str) -> None:
        seen[f"old:{task_id}"] = True

    @app.task(name="styles.new_errback")
    def new_errback(request: Any, exc: BaseException, traceback: Any, tag: str = "") -> None:
        seen[f"new:{request.id}"] = (request.task, repr(exc), traceback is not None, tag)

    @app.task(name="styles.bound_errback", bind=True)
    def bound_errback(self: Any, task_id: str) -> None:
        seen[f"bound:{task_id}"] = True

    worker = Worker(app, pool="threads", concurrency=4, install_signal_handlers=False)
    thread = threading.Thread(target=worker.start, daemon=True)
    thread.start()
    assert worker.ready.wait(10)
    try:
        yield app
    finally:
        worker.stop()
        thread.join(10)


def sig(name: str, *args: Any) -> Any:
    return signature(f"styles.{name}", args)  # by name, no app: Celery's current app


def test_workflows_are_sent_when_called(app: Celeriac) -> None:
    app.set_current()
    assert chain(sig("add", 1, 2), sig("add", 10), sig("add", 100))().get(timeout=10) == 113
    assert group(sig("add", i, i) for i in range(4))().get(timeout=10) == [0, 2, 4, 6]
    assert chord([sig("add", i, 1) for i in range(4)], sig("tsum"))().get(timeout=10) == 10
    assert chord(sig("add", i, 2) for i in range(3))(sig("tsum")).get(timeout=10) == 9


def test_a_signature_by_name_uses_the_current_app(app: Celeriac) -> None:
    other = Celeriac("other", broker_url="memory://")  # created last: current now
    assert sig("add", 1, 1)._require_app() is other
    app.set_current()
    assert sig("add", 2, 2).delay().get(timeout=10) == 4


def test_errbacks_in_both_forms(app: Celeriac) -> None:
    app.set_current()
    seen = app.seen  # type: ignore[attr-defined]
    errbacks = [sig("old_errback"), sig("new_errback").clone(kwargs={"tag": "t"})]
    errbacks.append(sig("bound_errback"))
    result = sig("fail", 7).apply_async(link_error=errbacks)
    with pytest.raises(ValueError):
        result.get(timeout=10)
    tid = result.id
    wait = threading.Event()
    for _ in range(500):
        if {f"old:{tid}", f"new:{tid}", f"bound:{tid}"} <= set(seen):
            break
        wait.wait(0.01)
    assert seen[f"new:{tid}"] == ("styles.fail", "ValueError('step failed', 1)", True, "t")
    assert seen[f"old:{tid}"] is True and seen[f"bound:{tid}"] is True


def test_a_failed_chord_calls_its_body_errback_with_the_request(app: Celeriac) -> None:
    app.set_current()
    seen = app.seen  # type: ignore[attr-defined]
    body = sig("tsum")
    body.link_error(sig("new_errback"))
    result = chord([sig("add", 1, 1), sig("fail")], body)()
    with pytest.raises(ChordError):
        result.get(timeout=10)
    task, exc, has_tb, _ = seen[f"new:{result.id}"]
    assert (task, exc.startswith("ChordError("), has_tb) == ("styles.tsum", True, False)


def test_every_step_carries_the_client_reply_queue(
    app: Celeriac, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(app.backend, "reply_to", lambda: "client-queue")
    flow = chain(sig("add", 1, 2), group(sig("add", 1), sig("add", 2)), sig("tsum"), app=app)
    flow.freeze()
    steps = flow.tasks
    assert steps[0].options["reply_to"] == "client-queue"
    body = steps[1]
    header = [dict(m) for m in body.header]  # type: ignore[attr-defined]
    replies = [m["options"]["reply_to"] for m in header]
    assert replies == ["client-queue", "client-queue"]
    assert body.body.options["reply_to"] == "client-queue"  # type: ignore[attr-defined]
