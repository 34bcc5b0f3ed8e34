"""Every broker keeps its dead letters within ``dead_letter_max_count`` and
``dead_letter_max_age`` (broker_transport_options), the oldest going first."""

from __future__ import annotations

import logging
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from celeriac.brokers import Broker, create_broker
from celeriac.brokers import dead_letters as caps
from celeriac.protocol.message import build_task_message
from celeriac.protocol.publication import Publication, Route
from celeriac.protocol.serializers import default_registry
from celeriac.transports.amqp.options import AMQPOptions
from celeriac.transports.memory.options import MemoryOptions
from celeriac.transports.redis.options import RedisOptions
from celeriac.transports.sqlite.options import SQLiteOptions
from tests import amqp_support, redis_support
from tests.amqp_support import amqp_vhost  # noqa: F401 - a fixture

MakeBroker = Callable[..., Broker]


@pytest.fixture(
    params=[
        "memory",
        "sqlite",
        pytest.param("redis", marks=pytest.mark.redis),
        pytest.param("amqp", marks=pytest.mark.amqp),
    ]
)
def make_broker(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[MakeBroker]:
    made: list[Broker] = []
    url = "memory://" if request.param == "memory" else f"sqlite:///{tmp_path}/b.db"
    defaults: dict[str, Any] = {}
    if request.param == "amqp":
        url = amqp_support.url_for(request.getfixturevalue("amqp_vhost"))
        defaults = {"dead_letter_queue": f"dead-{uuid.uuid4().hex[:8]}"}
    if request.param == "redis":
        url = redis_support.url_with_prefix(prefix := redis_support.new_prefix())
        request.addfinalizer(lambda: redis_support.drop(prefix))

    def make(**options: Any) -> Broker:
        broker = create_broker(url, {**defaults, **options})
        made.append(broker)
        return broker

    yield make
    names = set().union(*(amqp_support.queues_of(b) for b in made)) if made else set()
    for broker in made:
        broker.close()
    if request.param == "amqp" and names:
        amqp_support.delete_queues(url, names)


def dead_letter(broker: Broker, queue: str, task_ids: list[str]) -> None:
    """Publish, lease and dead-letter messages, in the order given."""
    for tid in task_ids:
        msg = build_task_message(default_registry, task_name="t", task_id=tid)
        broker.publish(Publication(msg, Route(queue)))
    got: dict[str, Any] = {}
    deadline = time.monotonic() + 10
    while len(got) < len(task_ids) and time.monotonic() < deadline:
        for d in broker.fetch([queue], len(task_ids) - len(got), timeout=1):
            got[str(d.message.task_id)] = d
    assert sorted(got) == sorted(task_ids)
    for tid in task_ids:
        broker.dead_letter(got[tid], f"reason {tid}")


def test_defaults_are_the_same_on_every_broker() -> None:
    assert (caps.MAX_COUNT, caps.MAX_AGE) == (10_000, 7 * 86400.0)
    for cls in (MemoryOptions, SQLiteOptions, RedisOptions, AMQPOptions):
        opts = cls()
        assert (opts.dead_letter_max_count, opts.dead_letter_max_age) == (10_000, 604_800.0)


def test_the_count_cap_keeps_the_newest(make_broker: MakeBroker) -> None:
    broker = make_broker(dead_letter_max_count=3)
    q = f"q-{uuid.uuid4().hex[:8]}"
    dead_letter(broker, q, [f"m{i}" for i in range(5)])
    dead = broker.dead_letters()
    assert [d.message.task_id for d in dead] == ["m2", "m3", "m4"]
    assert [d.reason for d in dead] == ["reason m2", "reason m3", "reason m4"]
    assert broker.purge_dead_letters() == 3


def test_the_age_cap_drops_what_waited_longer(make_broker: MakeBroker) -> None:
    broker = make_broker(dead_letter_max_age=0.5, dead_letter_max_count=None)
    q = f"q-{uuid.uuid4().hex[:8]}"
    dead_letter(broker, q, ["old1", "old2"])
    assert [d.message.task_id for d in broker.dead_letters()] == ["old1", "old2"]
    time.sleep(0.6)  # the age is the condition: these two must be older than 0.5 s
    dead_letter(broker, q, ["new"])
    assert [d.message.task_id for d in broker.dead_letters()] == ["new"]
    assert broker.purge_dead_letters() == 1


def test_no_caps_keeps_everything(make_broker: MakeBroker) -> None:
    broker = make_broker(dead_letter_max_count=0, dead_letter_max_age=None)
    q = f"q-{uuid.uuid4().hex[:8]}"
    dead_letter(broker, q, [f"m{i}" for i in range(4)])
    assert len(broker.dead_letters()) == 4
    assert broker.purge_dead_letters() == 4


@pytest.mark.amqp
def test_rabbitmq_declares_the_caps_as_queue_arguments(amqp_vhost: str) -> None:  # noqa: F811
    url = amqp_support.url_for(amqp_vhost)
    dlq = f"dead-{uuid.uuid4().hex[:8]}"
    broker = create_broker(
        url, {"dead_letter_queue": dlq, "dead_letter_max_count": 7, "dead_letter_max_age": 60}
    )
    try:
        broker.purge_dead_letters()  # declares it
        # Declaring it alike succeeds; with other arguments RabbitMQ refuses: they are the caps.
        same = {"x-max-length": 7, "x-message-ttl": 60_000}
        amqp_support.raw(
            url, lambda ch: ch.queue_declare(dlq, durable=True, auto_delete=False, arguments=same)
        )
        with pytest.raises(Exception, match="PRECONDITION_FAILED"):
            amqp_support.raw(
                url, lambda ch: ch.queue_declare(dlq, durable=True, auto_delete=False, arguments={})
            )
    finally:
        broker.close()
        amqp_support.delete_queues(url, [dlq])


@pytest.mark.amqp
def test_rabbitmq_uses_an_existing_uncapped_queue_and_says_how_to_cap_it(
    amqp_vhost: str,  # noqa: F811
    caplog: pytest.LogCaptureFixture,
) -> None:
    url = amqp_support.url_for(amqp_vhost)
    dlq, q = f"dead-{uuid.uuid4().hex[:8]}", f"q-{uuid.uuid4().hex[:8]}"
    amqp_support.raw(url, lambda ch: ch.queue_declare(dlq, durable=True, auto_delete=False))
    broker = create_broker(url, {"dead_letter_queue": dlq, "dead_letter_max_count": 2})
    try:
        with caplog.at_level(logging.WARNING, logger="celeriac.broker.amqp"):
            dead_letter(broker, q, ["a", "b", "c"])
        # Uncapped (the queue kept its arguments), every message there, and the way to cap it
        assert [d.message.task_id for d in broker.dead_letters()] == ["a", "b", "c"]
        assert "rabbitmqctl set_policy" in caplog.text
        assert f"'^{dlq}$'" in caplog.text
        # The README's way to cap it: a policy, which RabbitMQ applies to what is there too.
        subprocess.run(
            ["rabbitmqctl", "set_policy", "-p", amqp_vhost, "celeriac-dead", f"^{dlq}$",
             '{"max-length": 2, "message-ttl": 604800000}', "--apply-to", "queues"],
            check=True, capture_output=True, timeout=60,
        )  # fmt: skip
        deadline = time.monotonic() + 10
        while len(broker.dead_letters()) != 2:
            assert time.monotonic() < deadline, "the policy did not cap the queue"
            time.sleep(0.05)
        assert [d.message.task_id for d in broker.dead_letters()] == ["b", "c"]
        subprocess.run(
            ["rabbitmqctl", "clear_policy", "-p", amqp_vhost, "celeriac-dead"],
            check=True, capture_output=True, timeout=60,
        )  # fmt: skip
    finally:
        names = amqp_support.queues_of(broker) | {dlq, q}
        broker.close()
        amqp_support.delete_queues(url, names)
