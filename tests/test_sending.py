"""Option precedence for one task call: the call's option, then the task's, then the setting."""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest

from celeriac import Celeriac, Task
from celeriac.protocol.publication import Route
from celeriac.sending import (
    eta_of,
    expires_of,
    ignore_result_of,
    priority_of,
    resolve_route,
    serializer_of,
    time_limits_of,
)


@pytest.fixture
def app() -> Celeriac:
    return Celeriac("proj", broker_url="memory://", task_default_priority=2)


@pytest.fixture
def task(app: Celeriac) -> Task[Any, Any]:
    @app.task(
        name="proj.t",
        priority=7,
        serializer="pickle",
        ignore_result=True,
        time_limit=10,
        expires=60,
        queue="tq",
    )
    def t() -> None: ...

    return t


def test_priority_is_the_calls_then_the_routes_then_the_tasks_then_the_settings(
    app: Celeriac, task: Task[Any, Any]
) -> None:
    assert priority_of(1, 4, task, app.conf) == 1
    assert priority_of(None, 4, task, app.conf) == 4
    assert priority_of(None, None, task, app.conf) == 7
    assert priority_of(None, None, None, app.conf) == 2
    assert priority_of(0, 4, task, app.conf) == 0  # zero is an answer, not a gap


def test_the_task_fills_what_the_call_leaves_out(app: Celeriac, task: Task[Any, Any]) -> None:
    assert serializer_of(None, task, app.conf) == "pickle"
    assert serializer_of("json", task, app.conf) == "json"
    assert serializer_of(None, None, app.conf) == app.conf.task_serializer
    assert ignore_result_of(None, task, app.conf) is True
    assert ignore_result_of(False, task, app.conf) is False
    assert ignore_result_of(None, None, app.conf) is app.conf.task_ignore_result
    assert time_limits_of(None, 5, task) == (10, 5)
    assert time_limits_of(None, None, None) == (None, None)


def test_countdown_wins_over_eta_and_expires_is_relative_to_now(task: Task[Any, Any]) -> None:
    when = dt.datetime(2030, 1, 1, tzinfo=dt.timezone.utc)
    assert eta_of(when, None, 100.0) == when.timestamp()
    assert eta_of(when, 5, 100.0) == 105.0
    assert eta_of(None, None, 100.0) is None
    assert expires_of(None, task, 100.0) == 160.0
    assert expires_of(when, task, 100.0) == when.timestamp()
    assert expires_of(None, None, 100.0) is None


def test_the_calls_route_wins_over_task_routes_key_by_key(
    app: Celeriac, task: Task[Any, Any]
) -> None:
    app.conf.update(task_routes={"proj.*": {"queue": "routed", "priority": 9}})

    def route(**options: Any) -> tuple[Route, int | None]:
        return resolve_route(app.conf, app.topology, "proj.t", (), {}, task, options)

    assert route() == (Route("routed"), 9)
    assert route(queue="mine") == (Route("mine"), None)
    app.conf.update(task_routes=None)
    assert route() == (Route("tq"), None)  # the task's queue
    assert route(routing_key="bare") == (Route("bare"), None)  # a bare key names a queue
    assert route(exchange="ex", routing_key="k") == (Route("ex", "ex", "k", "direct"), None)


# -- the template a call without options reuses -------------------------------------------------
def _sent(app: Celeriac, queue: str) -> Any:
    [delivery] = app.broker.fetch([queue], 1, timeout=1)
    return delivery.message


def _counting_templates(app: Celeriac, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    made: list[str] = []
    original = app.call_template

    def counted(name: str, **options: Any) -> Any:
        made.append(name)
        return original(name, **options)

    monkeypatch.setattr(app, "call_template", counted)
    return made


def test_calls_without_options_share_one_template(
    app: Celeriac, task: Task[Any, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    made = _counting_templates(app, monkeypatch)
    ids = [task.delay().id for _ in range(3)]
    assert made == ["proj.t"]
    assert [_sent(app, "tq").task_id for _ in ids] == ids  # each call its own id
    task.apply_async(priority=3)  # options: a template of the call's own, not kept
    task.delay()
    app.send_task("proj.other")  # by name: one of its own
    app.send_task("proj.other")
    assert made == ["proj.t", "proj.t", "proj.other"]
    assert sorted(_sent(app, "tq").properties["priority"] for _ in range(2)) == [3, 7]


def test_a_kept_template_follows_the_settings_and_the_task(
    app: Celeriac, task: Task[Any, Any]
) -> None:
    app.send_task("proj.free")
    assert _sent(app, "celery").properties["priority"] == 2
    app.conf.task_default_priority = 5
    app.send_task("proj.free")
    assert _sent(app, "celery").properties["priority"] == 5
    app.conf.update(task_routes={"proj.free": {"queue": "routed"}})
    app.send_task("proj.free")
    assert _sent(app, "routed").properties["priority"] == 5
    task.delay()
    assert _sent(app, "tq").properties["priority"] == 7
    task.priority, task.queue = 1, "moved"
    task.delay()
    assert _sent(app, "moved").properties["priority"] == 1


def test_a_call_from_inside_a_task_is_not_given_the_kept_template(
    app: Celeriac, task: Task[Any, Any]
) -> None:
    from celeriac.tasks.context import Request, set_request

    task.delay()
    assert _sent(app, "tq").headers["parent_id"] is None
    token = set_request(Request(id="parent-1", task="proj.p", root_id="root-1"))
    try:
        task.delay()
    finally:
        set_request(None)
        del token
    headers = _sent(app, "tq").headers
    assert (headers["parent_id"], headers["root_id"]) == ("parent-1", "root-1")
    task.delay()
    assert _sent(app, "tq").headers["parent_id"] is None


def test_a_kept_template_is_made_again_with_new_connections(
    app: Celeriac, task: Task[Any, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    # rpc://'s reply queue is the connections' own: after close() the template reads it again.
    made = _counting_templates(app, monkeypatch)
    task.delay()
    task.delay()
    app.close()
    task.delay()
    assert made == ["proj.t", "proj.t"]
