"""Tasks run here: ``apply()``, ``self.request``, and eager mode with retries."""

from __future__ import annotations

import inspect
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from celeriac import Celeriac, EagerResult, Task
from celeriac.exceptions import InvalidTaskArguments
from celeriac.tasks.task import _fits, _simple_parameters


@pytest.fixture
def app() -> Celeriac:
    app = Celeriac("proj", broker_url="memory://")
    yield app
    app.close()


@pytest.fixture
def eager_app() -> Celeriac:
    app = Celeriac("proj", broker_url="memory://", task_always_eager=True)
    yield app
    app.close()


def flaky_task(app: Celeriac, failures: int, **options: Any) -> tuple[Task[Any, Any], list[int]]:
    """A bound task that asks to be retried ``failures`` times, recording request.retries."""
    seen: list[int] = []

    @app.task(bind=True, default_retry_delay=0, **options)
    def flaky(self: Task[Any, Any], x: int) -> int:
        seen.append(self.request.retries)
        if len(seen) <= failures:
            raise self.retry(exc=ConnectionError(f"attempt {len(seen)}"))
        return x * 10

    return flaky, seen


def test_bound_task_sees_its_request_inside_apply(app: Celeriac) -> None:
    @app.task(bind=True)
    def who(self: Task[Any, Any], x: int, *, y: int = 0) -> dict[str, Any]:
        req = self.request
        return {
            "name": self.name,
            "id": req.id,
            "args": req.args,
            "kwargs": req.kwargs,
            "eager": req.is_eager,
            "retries": req.retries,
            "root": req.root_id,
        }

    result = who.apply((1,), {"y": 2}, task_id="tid-1")
    assert isinstance(result, EagerResult)
    assert result.id == "tid-1"
    assert result.get() == {
        "name": who.name,
        "id": "tid-1",
        "args": [1],
        "kwargs": {"y": 2},
        "eager": True,
        "retries": 0,
        "root": "tid-1",
    }
    assert (result.state, result.successful(), result.ready()) == ("SUCCESS", True, True)


def test_request_outside_a_task_is_empty(app: Celeriac) -> None:
    @app.task(bind=True)
    def bound(self: Task[Any, Any]) -> None: ...

    assert bound.request.id is None
    assert bound.request.args == []


def test_apply_runs_here_even_without_eager_mode(app: Celeriac) -> None:
    @app.task
    def add(x: int, y: int) -> int:
        return x + y

    assert add.apply((2, 3)).get() == 5
    assert app.broker.depth("celery") == 0


def test_apply_failure_is_a_failed_result(app: Celeriac) -> None:
    @app.task
    def boom() -> None:
        raise ValueError("bad input", 42)

    result = boom.apply()
    assert (result.state, result.failed()) == ("FAILURE", True)
    assert isinstance(result.info, ValueError)
    assert "ValueError" in (result.traceback or "")
    with pytest.raises(ValueError, match="bad input"):
        result.get()
    assert isinstance(result.get(propagate=False), ValueError)
    with pytest.raises(ValueError):
        boom.apply(throw=True)


def test_eager_mode_runs_delay_in_process(eager_app: Celeriac) -> None:
    @eager_app.task
    def add(x: int, y: int) -> int:
        return x + y

    result = add.delay(2, 3)
    assert isinstance(result, EagerResult)
    assert result.get() == 5
    assert add.apply_async((1, 1), task_id="given").id == "given"
    assert eager_app.broker.depth("celery") == 0


def test_eager_retries_then_succeeds(eager_app: Celeriac) -> None:
    flaky, seen = flaky_task(eager_app, failures=2, max_retries=3)
    assert flaky.delay(4).get() == 40
    assert seen == [0, 1, 2]  # request.retries counts up on each attempt


def test_eager_retries_exhausted_give_the_original_error(eager_app: Celeriac) -> None:
    flaky, seen = flaky_task(eager_app, failures=10, max_retries=2)
    result = flaky.delay(4)
    assert seen == [0, 1, 2]
    assert result.state == "FAILURE"
    assert isinstance(result.info, ConnectionError)
    assert str(result.info) == "attempt 3"


def test_eager_retry_with_new_arguments(eager_app: Celeriac) -> None:
    @eager_app.task(bind=True, max_retries=1)
    def double_up(self: Task[Any, Any], x: int) -> int:
        if self.request.retries == 0:
            raise self.retry(args=(x * 2,), countdown=0)
        return x

    assert double_up.delay(5).get() == 10


def test_eager_propagates(eager_app: Celeriac) -> None:
    eager_app.conf.task_eager_propagates = True
    flaky, seen = flaky_task(eager_app, failures=10, max_retries=1)
    with pytest.raises(ConnectionError, match="attempt 2"):
        flaky.delay(1)
    assert seen == [0, 1]


def test_eager_autoretry_for(eager_app: Celeriac) -> None:
    calls: list[int] = []

    @eager_app.task(autoretry_for=[KeyError], max_retries=3)
    def lookup() -> str:
        calls.append(1)
        if len(calls) < 3:
            raise KeyError("not yet")
        return "found"

    assert lookup.delay().get() == "found"
    assert len(calls) == 3


def test_check_arguments(app: Celeriac) -> None:
    @app.task
    def add(x: int, y: int = 0) -> int:
        return x + y

    add.check_arguments((1,), {})
    add.check_arguments((), {"x": 1, "y": 2})
    for args, kwargs in [((), {}), ((1, 2, 3), {}), ((1,), {"z": 1}), ((1,), {"x": 1})]:
        with pytest.raises(InvalidTaskArguments):
            add.check_arguments(args, kwargs)


def test_check_arguments_skips_self_of_a_bound_task(app: Celeriac) -> None:
    @app.task(bind=True)
    def bound(self: Task[Any, Any], x: int) -> int:
        return x

    bound.check_arguments((1,), {})
    with pytest.raises(InvalidTaskArguments):
        bound.check_arguments((1, 2), {})


def test_check_arguments_can_be_turned_off(app: Celeriac) -> None:
    @app.task(typing=False)
    def loose(x: int) -> int:
        return x

    loose.check_arguments((1, 2, 3), {"z": 1})  # no error: the task opted out
    loose.delay(1, 2)
    assert app.broker.depth("celery") == 1


def test_eager_mode_checks_arguments_too(eager_app: Celeriac) -> None:
    @eager_app.task
    def one(x: int) -> int:
        return x

    with pytest.raises(InvalidTaskArguments):
        one.delay()


@given(
    st.integers(0, 3),
    st.integers(0, 3),
    st.integers(0, 4),
    st.lists(st.sampled_from(["a", "b", "c", "d", "e", "z"]), max_size=4, unique=True),
)
def test_check_arguments_fast_path_agrees_with_bind(
    required: int, optional: int, positional: int, keywords: list[str]
) -> None:
    """The shortcut for plain signatures accepts exactly what ``Signature.bind`` accepts."""
    names = ["a", "b", "c", "d", "e", "f"][: required + optional]
    params = [
        inspect.Parameter(
            n,
            inspect.Parameter.POSITIONAL_OR_KEYWORD,
            default=inspect.Parameter.empty if i < required else None,
        )
        for i, n in enumerate(names)
    ]
    simple = _simple_parameters(inspect.Signature(params))
    assert simple == (tuple(names), required)
    args, kwargs = tuple(range(positional)), dict.fromkeys(keywords, 0)
    try:
        inspect.Signature(params).bind(*args, **kwargs)
        accepted = True
    except TypeError:
        accepted = False
    assert _fits(simple, args, kwargs) is accepted
