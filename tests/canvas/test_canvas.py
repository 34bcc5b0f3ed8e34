"""Canvas on an in-process worker (threads pool) over the memory broker and backend."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator

import pytest

from celeriac import Celeriac, GroupResult, chain, chord, group
from celeriac.canvas.signature import Signature
from celeriac.exceptions import ChordError
from celeriac.worker import Worker


def make_app() -> Celeriac:
    app = Celeriac("canvas_tests", broker_url="memory://")

    @app.task(name="add")
    def add(x: int, y: int) -> int:
        return x + y

    @app.task(name="mul")
    def mul(x: int, y: int) -> int:
        return x * y

    @app.task(name="tsum")
    def tsum(values: list[int]) -> int:
        return sum(values)

    @app.task(name="fail")
    def fail(*args: object) -> None:
        raise ValueError("step failed")

    @app.task(name="record")
    def record(task_id: str) -> str:
        app.errbacks.append(task_id)  # type: ignore[attr-defined]
        return task_id

    app.errbacks = []  # type: ignore[attr-defined]
    return app


@pytest.fixture
def app() -> Iterator[Celeriac]:
    app = make_app()
    worker = Worker(app, pool="threads", concurrency=4, install_signal_handlers=False)
    thread = threading.Thread(target=worker.start, daemon=True)
    thread.start()
    assert worker.ready.wait(10)
    try:
        yield app
    finally:
        worker.stop()
        thread.join(10)


def t(app: Celeriac, name: str) -> object:
    return app.tasks[name]


def test_signature_serializes_as_celery_does(app):
    add = t(app, "add")
    sig = add.s(2).set(countdown=1)
    data = json.loads(json.dumps(sig))
    assert data == {
        "task": add.name,
        "args": [2],
        "kwargs": {},
        "options": {"countdown": 1},
        "subtask_type": None,
        "immutable": False,
    }
    assert Signature.from_dict(data).clone((1,))["args"] == [1, 2]
    assert add.si(1, 2).clone((5,))["args"] == [1, 2]  # immutable: no partial args


def test_chain_passes_results_along(app):
    add, mul = t(app, "add"), t(app, "mul")
    result = (add.s(1, 2) | mul.s(10) | add.s(5)).apply_async()
    assert result.get(timeout=10) == 35
    assert result.parent.get(timeout=10) == 30
    assert result.parent.parent.get(timeout=10) == 3


def test_group_results_in_order(app):
    add = t(app, "add")
    result = group(add.s(i, i) for i in range(10)).apply_async()
    assert isinstance(result, GroupResult)
    assert result.get(timeout=10) == [2 * i for i in range(10)]
    assert result.ready() and result.successful() and result.completed_count() == 10
    result.save()
    restored = GroupResult.restore(result.id, app)
    assert restored is not None and [r.id for r in restored] == [r.id for r in result]


def test_chord_body_runs_with_ordered_header_results(app):
    add, tsum = t(app, "add"), t(app, "tsum")
    result = chord(add.s(i, 0) for i in range(20))(tsum.s())
    assert result.get(timeout=10) == sum(range(20))


def test_group_piped_into_a_task_is_a_chord(app):
    add, tsum = t(app, "add"), t(app, "tsum")
    result = (group(add.s(1, 1), add.s(2, 2)) | tsum.s()).apply_async()
    assert result.get(timeout=10) == 6


def test_a_failed_header_fails_the_body_with_chord_error(app):
    add, tsum, fail = t(app, "add"), t(app, "tsum"), t(app, "fail")
    result = chord([add.s(1, 1), fail.s()], tsum.s()).apply_async()
    with pytest.raises(ChordError, match="ValueError"):
        result.get(timeout=10)


def test_chain_error_stops_it_runs_errback_and_get_raises(app):
    add, fail, record = t(app, "add"), t(app, "fail"), t(app, "record")
    steps = [add.s(1, 1), fail.s(), add.s(1), add.s(1)]
    result = chain(*steps).set(link_error=[dict(record.s())]).apply_async()
    with pytest.raises(ValueError, match="step failed"):
        result.get(timeout=10)
    failed_id = result.parent.parent.id  # the second step
    deadline = time.monotonic() + 10
    while not app.errbacks and time.monotonic() < deadline:
        time.sleep(0.01)
    assert app.errbacks == [failed_id]


def test_nested_chain_and_group_inside_a_chord(app):
    add, mul, tsum = t(app, "add"), t(app, "mul"), t(app, "tsum")
    result = chord(
        [add.s(1, 2) | mul.s(10), group(add.s(3, 3), add.s(4, 4))], tsum.s()
    ).apply_async()
    assert result.get(timeout=10) == 30 + 6 + 8


def test_map_starmap_and_chunks(app):
    add = t(app, "add")
    assert add.starmap([(1, 2), (3, 4)]).apply_async().get(timeout=10) == [3, 7]
    chunks = add.chunks([(i, i) for i in range(10)], 3).apply_async()
    assert chunks.get(timeout=10) == [[0, 2, 4], [6, 8, 10], [12, 14, 16], [18]]


def test_eager_mode_runs_workflows_in_process():
    app = make_app()
    app.conf.update(task_always_eager=True)
    add, mul, tsum = t(app, "add"), t(app, "mul"), t(app, "tsum")
    assert (add.s(1, 2) | mul.s(3)).apply_async().get() == 9
    assert group(add.s(1, 1), add.s(2, 2)).apply_async().get() == [2, 4]
    assert chord([add.s(1, 1), add.s(2, 2)], tsum.s()).apply_async().get() == 6


def test_app_signature_takes_options_as_keywords_or_a_dict_as_celery_does() -> None:
    app = make_app()
    sig = app.signature("add", (1, 2), queue="q", options={"countdown": 1}, immutable=True)
    assert sig.options == {"queue": "q", "countdown": 1}
    assert sig.immutable
