"""Redis routing as kombu lays it out: topic/direct exchanges through ``_kombu.binding.*``,
Broadcast through PUB/SUB, with Celery (kombu) producers on the other side."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import pytest

from celeriac import Broadcast, Celeriac, Exchange, Queue
from celeriac.brokers.base import Delivery
from celeriac.exceptions import BrokerError, ConfigurationError
from tests import redis_support

pytestmark = pytest.mark.redis

SEP = "\x06\x16"
MEDIA = Exchange("media", type="topic")
QUEUES = [
    Queue("images", MEDIA, routing_key="media.image.*"),
    Queue("all_media", MEDIA, routing_key="media.#"),
    Queue("reports", Exchange("office"), routing_key="report"),
    Broadcast("reload"),
]


@pytest.fixture
def prefix() -> Iterator[str]:
    prefix = redis_support.new_prefix()
    yield prefix
    redis_support.drop(prefix)


@pytest.fixture
def apps(prefix: str) -> Iterator[Any]:
    made: list[Celeriac] = []

    def make(**conf: Any) -> Celeriac:
        conf.setdefault("task_queues", QUEUES)
        app = Celeriac("proj", broker_url=redis_support.url_with_prefix(prefix), **conf)
        made.append(app)
        return app

    yield make
    for app in made:
        app.close()


def collect(app: Celeriac, queues: list[str], want: int, timeout: float = 5) -> list[Delivery]:
    got: list[Delivery] = []
    deadline = time.monotonic() + timeout
    while len(got) < want and time.monotonic() < deadline:
        got += app.broker.fetch(queues, 100, timeout=0.2)
    got += app.broker.fetch(queues, 100, timeout=0.2)  # and nothing more arrives
    app.broker.ack(got)
    return got


def test_topic_route_reaches_only_matching_queues(apps: Any, prefix: str) -> None:
    app = apps(task_routes={"proj.resize": {"exchange": "media", "routing_key": "media.image.png"}})
    png = app.send_task("proj.resize").id
    doc = app.send_task("proj.file", exchange="media", routing_key="media.doc").id
    report = app.send_task("proj.r", exchange="office", routing_key="report").id
    got = collect(app, ["images", "all_media", "reports"], 4)
    assert sorted((d.queue, d.message.task_id) for d in got) == sorted(
        [("images", png), ("all_media", png), ("all_media", doc), ("reports", report)]
    )
    client = app.broker.client  # type: ignore[attr-defined]
    # kombu's binding table, with kombu's regex for topic bindings
    assert client.smembers(f"{prefix}_kombu.binding.media") == {
        f"media.image.*{SEP}^media\\.image\\.[^\\.]+$ {SEP}images".replace(" ", "").encode(),
        f"media.#{SEP}^media\\..*?${SEP}all_media".encode(),
    }
    with pytest.raises(BrokerError, match="no queue is bound"):
        app.send_task("proj.x", exchange="media", routing_key="other")


def test_a_celery_producer_routes_to_our_queues_through_the_binding_table(
    apps: Any, prefix: str
) -> None:
    from celery import Celery

    app = apps()
    app.broker.fetch(["images"], 1, timeout=0)  # a consumer declares its bindings
    capp = Celery(
        "p",
        broker=redis_support.base_url(),
        broker_transport_options={"global_keyprefix": prefix},
        set_as_current=False,
    )
    try:
        from kombu import Exchange as KExchange
        from kombu import Queue as KQueue

        media = KExchange("media", type="topic")
        capp.conf.task_queues = [KQueue("images", media, "media.image.*")]
        # Celery publishes to the queue's exchange with the key given (the queue declares it:
        # kombu knows exchange types only from declarations in the producing process)
        sent = capp.send_task("proj.t", queue="images", routing_key="media.image.gif").id
    finally:
        capp.close()
    got = collect(app, ["images", "all_media"], 2)
    assert sorted((d.queue, d.message.task_id) for d in got) == [
        ("all_media", sent),
        ("images", sent),
    ]


def test_broadcast_reaches_each_node_once(apps: Any) -> None:
    # two nodes; the second has two processes (brokers) that share one copy
    n1 = apps(worker_hostname="n1@test")
    n2a, n2b = apps(worker_hostname="n2@test"), apps(worker_hostname="n2@test")
    for app in (n1, n2a, n2b):
        assert app.broker.fetch(["reload"], 10, timeout=0) == []  # subscribes
    producer = apps()
    sent = [producer.send_task("proj.reload", queue="reload").id for _ in range(3)]
    assert [d.message.task_id for d in collect(n1, ["reload"], 3)] == sent
    two = collect(n2a, ["reload", "images"], 3, timeout=1) + collect(n2b, ["reload"], 3, timeout=1)
    assert sorted(d.message.task_id for d in two) == sorted(sent)
    assert {d.queue for d in two} == {"reload"}


def test_a_celery_broadcast_reaches_our_subscriber(apps: Any, prefix: str) -> None:
    from celery import Celery
    from kombu.common import Broadcast as KBroadcast

    app = apps()
    app.broker.fetch(["reload"], 1, timeout=0)
    capp = Celery(
        "p",
        broker=redis_support.base_url(),
        broker_transport_options={"global_keyprefix": prefix},
        set_as_current=False,
    )
    capp.conf.task_queues = [KBroadcast("reload")]
    try:
        with capp.producer_or_acquire() as producer:
            # kombu learns the exchange is a fanout one only from a declaration on its channel;
            # Celery then publishes on /<db>.reload/celery (its default routing key)
            KBroadcast("reload").exchange(producer.channel).declare()
            sent = capp.send_task("proj.reload", queue="reload", producer=producer).id
    finally:
        capp.close()
    got = collect(app, ["reload"], 1)
    assert [(d.queue, d.message.task_id) for d in got] == [("reload", sent)]


def test_a_broadcast_nobody_hears_or_that_is_delayed_is_an_error(apps: Any) -> None:
    producer = apps()
    with pytest.raises(BrokerError, match="no worker is subscribed"):
        producer.send_task("proj.reload", queue="reload")
    listener = apps()
    listener.broker.fetch(["reload"], 1, timeout=0)
    with pytest.raises(ConfigurationError, match="cannot be delayed"):
        producer.send_task("proj.reload", queue="reload", countdown=5)


def test_a_broadcast_delivery_given_back_runs_again_here(apps: Any) -> None:
    app = apps()
    app.broker.fetch(["reload"], 1, timeout=0)
    sent = apps().send_task("proj.reload", queue="reload").id
    [d] = collect(app, ["reload"], 1)
    app.broker.requeue(d)
    assert [x.message.task_id for x in app.broker.fetch(["reload"], 1, timeout=0)] == [sent]
    app.broker.dead_letter(d, "test")
    assert [x.reason for x in app.broker.dead_letters()] == ["test"]


def test_a_plain_queue_on_a_fanout_exchange_is_pub_sub_as_in_kombu(apps: Any) -> None:
    fan = Exchange("fan", type="fanout")
    app = apps(task_queues=[Queue("shared", fan)], worker_hostname="n1@test")
    assert app.broker.fetch(["shared"], 1, timeout=0) == []  # subscribes
    sent = app.send_task("proj.t", queue="shared").id
    got = collect(app, ["shared"], 1)
    assert [(d.queue, d.message.task_id) for d in got] == [("shared", sent)]
