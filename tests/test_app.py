"""The app: task registration, and the messages send_task/apply_async put on the broker."""

from __future__ import annotations

import datetime as dt
import json
import time
from typing import Any

import pytest

from celeriac import AsyncResult, Celeriac, Task
from celeriac.brokers import Delivery
from celeriac.exceptions import InvalidTaskArguments, MessageTooLarge, ProtocolError


@pytest.fixture
def app() -> Celeriac:
    app = Celeriac("proj", broker_url="memory://")
    yield app
    app.close()


@pytest.fixture
def add(app: Celeriac) -> Task[Any, Any]:
    def add(x: int, y: int) -> int:
        return x + y

    # As if defined at the top of proj/tasks.py.
    add.__module__, add.__qualname__ = "proj.tasks", "add"
    return app.task(add)


def fetch(app: Celeriac, queue: str = "celery") -> list[Delivery]:
    return app.broker.fetch([queue], 10, timeout=0)


def fetch_one(app: Celeriac, queue: str = "celery") -> Delivery:
    [delivery] = fetch(app, queue)
    return delivery


def body(delivery: Delivery) -> list[Any]:
    return json.loads(delivery.message.body)


# -- registration ---------------------------------------------------------------------------


def test_task_without_arguments(app: Celeriac, add: Task[Any, Any]) -> None:
    assert isinstance(add, Task)
    assert add.name == "proj.tasks.add"  # module.function
    assert app.tasks["proj.tasks.add"] is add
    assert add(2, 3) == 5  # calling it runs it here


def test_task_with_arguments(app: Celeriac) -> None:
    @app.task(name="custom.name", queue="slow", max_retries=7)
    def mul(x: int, y: int) -> int:
        return x * y

    assert mul.name == "custom.name"
    assert "custom.name" in app.tasks
    assert (mul.queue, mul.max_retries) == ("slow", 7)
    assert mul(3, 4) == 12


def test_name_of_a_nested_function_uses_its_qualname(app: Celeriac) -> None:
    @app.task
    def inner() -> None: ...

    assert inner.name == f"{__name__}.{inner.fun.__qualname__}"
    assert inner.name.endswith("test_name_of_a_nested_function_uses_its_qualname.<locals>.inner")


def test_main_module_tasks_are_named_after_the_app(app: Celeriac) -> None:
    def ping() -> str:
        return "pong"

    ping.__module__, ping.__qualname__ = "__main__", "ping"
    assert app.task(ping).name == "proj.ping"


def test_unknown_task_option_is_an_error(app: Celeriac) -> None:
    with pytest.raises(TypeError, match="max_retires"):
        app.task(max_retires=3)(lambda: None)


def test_unregistered_name_says_what_is_close(app: Celeriac, add: Task[Any, Any]) -> None:
    with pytest.raises(KeyError, match=r"did you mean 'proj\.tasks\.add'"):
        app.tasks["proj.tasks.ad"]


# -- sending --------------------------------------------------------------------------------


def test_delay_publishes_a_v2_message(app: Celeriac, add: Task[Any, Any]) -> None:
    result = add.delay(2, 3)
    assert isinstance(result, AsyncResult)
    d = fetch_one(app)
    h = d.message.headers
    assert (h["task"], h["id"], h["root_id"]) == ("proj.tasks.add", result.id, result.id)
    assert d.message.properties["correlation_id"] == result.id
    assert body(d) == [
        [2, 3],
        {},
        {"callbacks": None, "errbacks": None, "chain": None, "chord": None},
    ]
    assert result.state == "PENDING"  # the memory backend has nothing for it yet


def test_send_task_to_an_unregistered_name(app: Celeriac) -> None:
    result = app.send_task("remote.task", (1,), {"a": 2}, task_id="fixed-id")
    assert result.id == "fixed-id"
    d = fetch_one(app)
    assert (d.message.headers["task"], d.message.headers["id"]) == ("remote.task", "fixed-id")
    assert body(d)[:2] == [[1], {"a": 2}]


def test_countdown_becomes_an_eta_header(app: Celeriac, add: Task[Any, Any]) -> None:
    before = time.time()
    publication = app.prepare_message(add.name, (1, 2), countdown=30)
    message, eta = publication.message, publication.eta
    after = time.time()
    header_eta = dt.datetime.fromisoformat(message.headers["eta"])
    assert header_eta.utcoffset() == dt.timedelta(0)
    assert before + 30 - 1e-3 <= header_eta.timestamp() <= after + 30 + 1e-3
    assert eta == pytest.approx(header_eta.timestamp(), abs=1e-3)
    # Sent, the broker holds it: nothing to fetch now.
    add.apply_async((1, 2), countdown=30)
    assert fetch(app) == []
    assert app.broker.depth("celery") == 1


def test_expires_sets_header_and_expiration_property(app: Celeriac, add: Task[Any, Any]):
    before = time.time()
    add.apply_async((1, 2), expires=120)
    d = fetch_one(app)
    expires = dt.datetime.fromisoformat(d.message.headers["expires"])
    assert expires.utcoffset() == dt.timedelta(0)
    assert expires.timestamp() == pytest.approx(before + 120, abs=1)
    assert d.message.properties["expiration"] == "120000"
    assert d.message.headers["eta"] is None


def test_expires_as_a_datetime(app: Celeriac, add: Task[Any, Any]) -> None:
    when = dt.datetime.now(dt.timezone.utc) + dt.timedelta(seconds=60)
    add.apply_async((1, 2), expires=when)
    d = fetch_one(app)
    assert dt.datetime.fromisoformat(d.message.headers["expires"]) == when
    assert 59_000 <= int(d.message.properties["expiration"]) <= 60_000


def test_task_level_expires_is_the_default(app: Celeriac) -> None:
    @app.task(expires=10)
    def short() -> None: ...

    short.delay()
    assert fetch_one(app).message.properties["expiration"] == "10000"


def test_queue_option(app: Celeriac, add: Task[Any, Any]) -> None:
    add.apply_async((1, 2), queue="high")
    assert fetch(app) == []
    assert fetch_one(app, "high").queue == "high"


def test_task_level_queue(app: Celeriac) -> None:
    @app.task(queue="slow")
    def slow() -> None: ...

    slow.delay()
    assert fetch_one(app, "slow").message.headers["task"] == slow.name


def test_task_routes_exact_and_glob(app: Celeriac, add: Task[Any, Any]) -> None:
    app.conf.task_routes = {
        "proj.tasks.add": "exact",
        "proj.tasks.*": {"queue": "globbed", "priority": 7},
    }
    app.send_task("proj.tasks.mul", (1,))
    add.delay(1, 2)
    add.apply_async((1, 2), queue="explicit")  # an explicit queue beats the routes
    app.send_task("other.task")
    assert fetch_one(app, "exact").message.headers["task"] == "proj.tasks.add"
    globbed = fetch_one(app, "globbed")
    assert globbed.message.headers["task"] == "proj.tasks.mul"
    assert globbed.message.properties["priority"] == 7
    assert fetch_one(app, "explicit").message.headers["task"] == "proj.tasks.add"
    assert fetch_one(app, "celery").message.headers["task"] == "other.task"


def test_task_routes_callable(app: Celeriac, add: Task[Any, Any]) -> None:
    app.conf.task_routes = [lambda name, args, kwargs, options, task=None: {"queue": f"q{args[0]}"}]
    add.delay(1, 2)
    assert fetch_one(app, "q1").message.headers["task"] == add.name


def test_priority(app: Celeriac, add: Task[Any, Any]) -> None:
    add.apply_async((1, 1))
    add.apply_async((2, 2), priority=5)
    first, second = fetch(app)
    assert (first.message.properties["priority"], body(first)[0]) == (5, [2, 2])
    assert second.message.properties["priority"] == 0


def test_other_send_options_reach_the_headers(app: Celeriac, add: Task[Any, Any]) -> None:
    add.apply_async(
        (1, 2),
        headers={"x-custom": "v"},
        shadow="add-shadow",
        time_limit=60,
        soft_time_limit=50,
        ignore_result=True,
        exchange="ignored",
    )
    h = fetch_one(app).message.headers
    assert h["x-custom"] == "v"
    assert (h["shadow"], h["timelimit"], h["ignore_result"]) == ("add-shadow", [60, 50], True)


def test_link_and_link_error_become_callbacks_and_errbacks(app: Celeriac, add: Task[Any, Any]):
    add.apply_async(
        (1, 2), link=add.s(10), link_error=app.signature("tasks.tsum", ([0],), immutable=True)
    )
    embed = body(fetch_one(app))[2]
    assert embed["callbacks"] == [
        {
            "task": "proj.tasks.add",
            "args": [10],
            "kwargs": {},
            "options": {},
            "subtask_type": None,
            "immutable": False,
        }
    ]
    assert embed["errbacks"][0]["task"] == "tasks.tsum"
    assert embed["errbacks"][0]["immutable"] is True


def test_message_too_large(app: Celeriac, add: Task[Any, Any]) -> None:
    app.conf.broker_max_message_size = 200
    add.delay("x" * 100, "y")  # fits
    with pytest.raises(MessageTooLarge, match="broker_max_message_size=200") as info:
        add.delay("x" * 300, "y")
    assert isinstance(info.value, ProtocolError)
    assert app.broker.depth("celery") == 1


def test_wrong_arguments_are_refused_before_sending(app: Celeriac, add: Task[Any, Any]):
    with pytest.raises(InvalidTaskArguments, match=r"proj\.tasks\.add"):
        add.delay(1)
    with pytest.raises(TypeError):  # InvalidTaskArguments is a TypeError too
        add.apply_async((1, 2), {"z": 3})
    assert app.broker.depth("celery") == 0


def test_unknown_apply_async_option(app: Celeriac, add: Task[Any, Any]) -> None:
    with pytest.raises(TypeError, match="countdwn"):
        add.apply_async((1, 2), countdwn=3)
    assert app.broker.depth("celery") == 0


def test_chain_embeds_the_remaining_steps_in_reverse(app: Celeriac, add: Task[Any, Any]):
    @app.task
    def mul(x: int, y: int) -> int:
        return x * y

    result = (add.s(1, 2) | mul.s(3) | mul.s(4)).apply_async()
    d = fetch_one(app)
    args, kwargs, embed = body(d)
    assert (d.message.headers["task"], args, kwargs) == ("proj.tasks.add", [1, 2], {})
    rest = embed["chain"]
    assert [(s["task"], s["args"]) for s in rest] == [(mul.name, [4]), (mul.name, [3])]
    step_ids = [
        d.message.headers["id"],
        rest[1]["options"]["task_id"],
        rest[0]["options"]["task_id"],
    ]
    assert len(set(step_ids)) == 3
    assert result.id == rest[0]["options"]["task_id"]  # the chain's result is its last step's


def test_two_step_chain(app: Celeriac, add: Task[Any, Any]) -> None:
    (add.s(1) | add.s()).apply_async((2,))  # args given to the chain go to the first step
    args, _, embed = body(fetch_one(app))
    assert args == [2, 1]
    assert [(s["task"], s["args"], s["immutable"]) for s in embed["chain"]] == [
        (add.name, [], False)
    ]
