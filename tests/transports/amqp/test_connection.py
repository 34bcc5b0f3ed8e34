"""The link's I/O thread against RabbitMQ: heartbeats while nobody calls, a silent peer given
up in bounded time, channels RabbitMQ closes and consumers it cancels."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from celeriac.brokers import create_broker
from celeriac.protocol.message import build_task_message
from celeriac.protocol.publication import Publication, Route
from celeriac.protocol.serializers import default_registry
from celeriac.transports.amqp.broker import AMQPBroker
from celeriac.transports.amqp.declarations import delay_queue
from tests import amqp_support
from tests.amqp_support import amqp_vhost  # noqa: F401 - a fixture

pytestmark = pytest.mark.amqp


@pytest.fixture
def url(amqp_vhost: str) -> str:  # noqa: F811 - the fixture imported above
    return amqp_support.url_for(amqp_vhost)


@pytest.fixture
def q(url: str) -> Iterator[str]:
    name = f"link-{uuid.uuid4().hex[:8]}"
    yield name
    amqp_support.delete_queues(url, [name, *(delay_queue(i, name) for i in range(28))])


def msg(task_id: str) -> Any:
    return build_task_message(default_registry, task_name="t", task_id=task_id)


def proxied(url: str, proxy: amqp_support.Proxy, query: str = "") -> AMQPBroker:
    broker = create_broker(amqp_support.url_for(url.rsplit("/", 1)[1], proxy.port) + query)
    assert isinstance(broker, AMQPBroker)
    return broker


def wait_for(check: Any, timeout: float) -> float:
    started = time.monotonic()
    while not check():
        assert time.monotonic() - started < timeout, "timed out"
        time.sleep(0.05)
    return time.monotonic() - started


def test_a_delivery_stays_leased_while_nobody_calls(url: str, q: str) -> None:
    # heartbeat=2: RabbitMQ drops a connection it hears nothing from for ~4 s (with 1 s, a
    # loaded machine could delay the I/O thread's beat past RabbitMQ's patience)
    broker = create_broker(url + "?heartbeat=2")
    assert isinstance(broker, AMQPBroker)
    try:
        broker.publish(Publication(msg("long"), Route(q)))
        [d] = broker.fetch([q], 1, timeout=5)
        conn = broker.link._conn
        time.sleep(5.5)  # a long task: no fetch, no ack; the I/O thread keeps the heartbeats
        assert broker.link._conn is conn and conn is not None and conn.connected
        broker.ack([d])
        assert broker.depth(q) == 0  # acked on the channel it came from: not redelivered
    finally:
        broker.close()


def test_a_silent_peer_is_given_up_within_two_heartbeats(url: str, q: str) -> None:
    proxy = amqp_support.Proxy()
    broker = proxied(url, proxy, "?heartbeat=1&connect_timeout=2")
    try:
        broker.publish(Publication(msg("a"), Route(q)))
        [stale] = broker.fetch([q], 1, timeout=5)
        conn = broker.link._conn
        proxy.silent = True  # frames go nowhere, no connection closes
        took = wait_for(lambda: broker.link._conn is not conn, 10)
        assert took < 2 * 1 + 1 + 1  # two heartbeat intervals, a tick, and slack
        proxy.silent = False
        again = broker.fetch([q], 1, timeout=15)  # on a new connection, once RabbitMQ gave up
        assert [(d.message.task_id, d.delivery_count) for d in again] == [("a", 2)]
        broker.ack([stale])  # an older channel's: dropped
        broker.ack(again)
        assert broker.depth(q) == 0
    finally:
        broker.close()
        proxy.close()


def test_a_channel_rabbitmq_closes_ends_its_epoch(url: str, q: str) -> None:
    broker = create_broker(url)
    assert isinstance(broker, AMQPBroker)
    link = broker.link
    try:
        broker.publish(Publication(msg("a"), Route(q)))
        [stale] = broker.fetch([q], 1, timeout=5)
        before = link.existing("consume")
        assert before is not None
        # An unknown delivery tag: RabbitMQ closes the channel (PRECONDITION_FAILED).
        link.submit(lambda: before.channel.basic_ack(10_000))
        wait_for(lambda: link.existing("consume") is None, 5)  # not reopened behind our back
        assert link._conn is not None and link._conn.connected  # the connection lives on
        [again] = broker.fetch([q], 1, timeout=5)
        assert (again.message.task_id, again.delivery_count) == ("a", 2)
        after = link.existing("consume")
        assert after is not None and after.epoch > before.epoch
        broker.ack([stale])  # dropped: no second channel error
        broker.ack([again])
        assert broker.depth(q) == 0
    finally:
        broker.close()


def test_a_consumer_rabbitmq_cancels_is_subscribed_again(url: str, q: str) -> None:
    broker = create_broker(url)
    try:
        assert broker.fetch([q], 1, timeout=0.2) == []  # consuming an empty queue
        amqp_support.delete_queues(url, [q])  # RabbitMQ cancels the consumer
        time.sleep(0.2)
        broker.publish(Publication(msg("b"), Route(q)))  # comes back, declared again, sent
        got: list[Any] = []
        deadline = time.monotonic() + 5
        while not got and time.monotonic() < deadline:
            got = broker.fetch([q], 1, timeout=0.5)
        assert [d.message.task_id for d in got] == ["b"]
        broker.ack(got)
    finally:
        broker.close()
