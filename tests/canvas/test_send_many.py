"""``app.send_many``: many calls built first, then published in one batch, over every broker
whose ``publish_many`` it uses (RabbitMQ's is in the broker contract suite)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from celeriac import Celeriac, chain, chord, group
from celeriac.brokers import Broker
from celeriac.exceptions import BrokerError, EncodeError, InvalidTaskArguments
from celeriac.protocol.message import decode_body, read_headers
from celeriac.result import EagerResult
from tests import postgres_support, redis_support


@pytest.fixture(
    params=[
        "memory",
        "sqlite",
        pytest.param("redis", marks=pytest.mark.redis),
        pytest.param("postgres", marks=pytest.mark.postgres),
    ]
)
def app(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Celeriac]:
    url = "memory://" if request.param == "memory" else f"sqlite:///{tmp_path}/b.db"
    if request.param == "redis":
        url = redis_support.url_with_prefix(prefix := redis_support.new_prefix())
        request.addfinalizer(lambda: redis_support.drop(prefix))
    if request.param == "postgres":
        url = postgres_support.postgres_url(request)
    app = Celeriac("batch", broker=url, backend=url if request.param != "memory" else None)

    @app.task(name="batch.add")
    def add(x: int, y: int) -> int:
        return x + y

    yield app
    app.close()


def drain(broker: Broker, queue: str) -> list[tuple[str, list[Any]]]:
    """(task id, args) of every message on ``queue``, in the order a worker gets them."""
    got, wait = [], 2.0  # PostgreSQL may wait for the NOTIFY after an empty claim
    while batch := broker.fetch([queue], 100, timeout=wait):
        got += batch
        broker.ack(batch)
        wait = 0
    registry, accept = default_accept()
    out = []
    for d in got:
        headers = read_headers(d.message, registry, accept)
        args, _, _ = decode_body(d.message, headers, registry, accept)
        out.append((headers.id, args))
    return out


def default_accept() -> tuple[Any, frozenset[str]]:
    from celeriac.protocol.serializers import default_registry

    return default_registry, frozenset({"application/json"})


class Calls:
    """Counts ``publish_many`` calls of a broker and the messages each carried."""

    def __init__(self, broker: Broker, monkeypatch: pytest.MonkeyPatch) -> None:
        self.sizes: list[int] = []
        real = broker.publish_many

        def publish_many(publications: Any) -> None:
            self.sizes.append(len(publications))
            real(publications)

        monkeypatch.setattr(broker, "publish_many", publish_many)


def test_every_call_arrives_once_in_order(app: Celeriac, monkeypatch: pytest.MonkeyPatch) -> None:
    add = app.tasks["batch.add"]
    calls = Calls(app.broker, monkeypatch)
    results = app.send_many([add.s(i, i) for i in range(25)])
    assert calls.sizes == [25]  # one batch
    assert drain(app.broker, "celery") == [(r.id, [i, i]) for i, r in enumerate(results)]
    assert len({r.id for r in results}) == 25


def test_a_batch_over_several_queues(app: Celeriac) -> None:
    add = app.tasks["batch.add"]
    sigs = [add.s(i, 0).set(queue=f"q{i % 3}") for i in range(10)]
    results = app.send_many(sigs)
    for q in range(3):
        want = [(r.id, [i, 0]) for i, r in enumerate(results) if i % 3 == q]
        assert drain(app.broker, f"q{q}") == want
    assert app.broker.depth("celery") == 0


def test_a_batch_over_the_brokers_limit_is_split(
    app: Celeriac, monkeypatch: pytest.MonkeyPatch
) -> None:
    add = app.tasks["batch.add"]
    monkeypatch.setattr(app.broker, "max_batch", 4)
    calls = Calls(app.broker, monkeypatch)
    results = app.send_many([add.s(i, 1) for i in range(10)])
    assert calls.sizes == [4, 4, 2]
    assert drain(app.broker, "celery") == [(r.id, [i, 1]) for i, r in enumerate(results)]


def test_a_broker_error_part_way_leaves_the_parts_sent_before_it(
    app: Celeriac, monkeypatch: pytest.MonkeyPatch
) -> None:
    add = app.tasks["batch.add"]
    monkeypatch.setattr(app.broker, "max_batch", 3)
    real, sent = app.broker.publish_many, []

    def publish_many(publications: Any) -> None:
        if sent:
            raise BrokerError("the broker went away")
        sent.append(len(publications))
        real(publications)

    monkeypatch.setattr(app.broker, "publish_many", publish_many)
    with pytest.raises(BrokerError):
        app.send_many([add.s(i, i) for i in range(7)])
    assert [args for _, args in drain(app.broker, "celery")] == [[0, 0], [1, 1], [2, 2]]


@pytest.mark.redis
def test_redis_takes_a_thousand_a_round_trip(monkeypatch: pytest.MonkeyPatch) -> None:
    prefix = redis_support.new_prefix()
    url = redis_support.url_with_prefix(prefix)
    app = Celeriac("batch", broker=url, backend=url)
    try:
        calls = Calls(app.broker, monkeypatch)
        app.send_many([app.signature("batch.add", (i, i)) for i in range(2500)])
        assert calls.sizes == [1000, 1000, 500]
        assert app.broker.depth("celery") == 2500
    finally:
        app.close()
        redis_support.drop(prefix)


def test_options_apply_to_every_call_and_win(app: Celeriac) -> None:
    add = app.tasks["batch.add"]
    results = app.send_many([add.s(1, 2).set(queue="mine"), add.s(3, 4)], queue="both")
    assert [tid for tid, _ in drain(app.broker, "both")] == [r.id for r in results]
    assert app.broker.depth("mine") == 0


def test_an_argument_that_cannot_be_encoded_sends_nothing(app: Celeriac) -> None:
    add = app.tasks["batch.add"]
    with pytest.raises(EncodeError) as info:
        app.send_many([add.s(1, 1), add.s(2, 2), add.s(object(), 3)])
    assert str(info.value).startswith(
        "cannot send batch.add: argument 0 (object) cannot be encoded with the json serializer"
    )
    assert str(info.value).endswith("(call 2 of 3 given to send_many; none of them was sent)")
    assert app.broker.depth("celery") == 0


def test_arguments_that_do_not_fit_send_nothing(app: Celeriac) -> None:
    add = app.tasks["batch.add"]
    with pytest.raises(InvalidTaskArguments, match=r"call 1 of 2 given to send_many"):
        app.send_many([add.s(1, 1), add.s(1, 2, 3)])
    assert app.broker.depth("celery") == 0


def test_the_same_signature_twice_is_two_calls_and_a_frozen_id_is_kept(app: Celeriac) -> None:
    add = app.tasks["batch.add"]
    sig, frozen = add.s(1, 1), add.s(2, 2)
    frozen_id = frozen.freeze().id
    results = app.send_many([sig, sig, frozen])
    assert len({r.id for r in results}) == 3
    assert results[2].id == frozen_id
    assert [tid for tid, _ in drain(app.broker, "celery")] == [r.id for r in results]


def test_workflows_among_the_calls(app: Celeriac) -> None:
    add = app.tasks["batch.add"]
    steps = chain(add.s(1, 1), add.s(5))
    both = chord([add.s(4, 4), add.s(5, 5)], add.s(0))
    results = app.send_many([add.s(0, 0), steps, group(add.s(2, 2), add.s(3, 3)), both])
    got = drain(app.broker, "celery")
    # the task, the chain's first step (the rest rides in its message), the group's two, the
    # chord's header (its body rides in their messages)
    assert [args for _, args in got] == [[0, 0], [1, 1], [2, 2], [3, 3], [4, 4], [5, 5]]
    assert results[1].parent is not None and got[1][0] == results[1].parent.id
    assert [tid for tid, _ in got[2:4]] == [r.id for r in results[2].results]  # type: ignore[attr-defined]


def test_groups_and_chunks_go_out_as_one_batch(
    app: Celeriac, monkeypatch: pytest.MonkeyPatch
) -> None:
    add = app.tasks["batch.add"]
    calls = Calls(app.broker, monkeypatch)
    add.chunks([(i, i) for i in range(10)], 3).apply_async()
    assert calls.sizes == [4]  # 3 + 3 + 3 + 1 items: four celery.starmap messages, one batch
    got = drain(app.broker, "celery")
    assert [len(args[1]) for _, args in got] == [3, 3, 3, 1]
    group(add.s(i, i) for i in range(6)).apply_async()
    assert calls.sizes == [4, 6]
    assert len(drain(app.broker, "celery")) == 6


def test_eager_apps_run_each_call_here() -> None:
    app = Celeriac("eager", broker="memory://", task_always_eager=True)

    @app.task(name="eager.add")
    def add(x: int, y: int) -> int:
        return x + y

    results = app.send_many([add.s(1, 2), add.s(3, 4)])
    assert all(isinstance(r, EagerResult) for r in results)
    assert [r.get() for r in results] == [3, 7]


def test_signatures_only() -> None:
    app = Celeriac("types", broker="memory://")
    with pytest.raises(TypeError, match="send_many takes signatures"):
        app.send_many([("batch.add", (1, 2))])  # type: ignore[list-item]
    with pytest.raises(TypeError, match="unknown apply_async option"):
        app.send_many([], quue="x")
    with pytest.raises(TypeError, match="task_id names one call"):
        app.send_many([], task_id="x")
