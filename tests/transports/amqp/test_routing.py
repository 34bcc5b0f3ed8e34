"""RabbitMQ routing: task_queues declared as Celery does, topic/direct exchanges, Broadcast,
quorum queues."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from celeriac import Broadcast, Celeriac, Exchange, Queue
from celeriac.brokers.base import Delivery
from celeriac.exceptions import BrokerError
from celeriac.transports.amqp.declarations import delay_queue
from tests import amqp_support
from tests.amqp_support import amqp_vhost, raw  # noqa: F401 - a fixture

pytestmark = pytest.mark.amqp


@pytest.fixture
def url(amqp_vhost: str) -> str:  # noqa: F811 - the fixture imported above
    return amqp_support.url_for(amqp_vhost)


class Names:
    """Unique names for a test; its queues (with delay cascades) and exchanges go after it."""

    def __init__(self) -> None:
        self.queues: list[str] = []
        self.exchanges: list[str] = []
        self.apps: list[Celeriac] = []
        self.tag = uuid.uuid4().hex[:8]

    def queue(self, stem: str) -> str:
        self.queues.append(f"{stem}-{self.tag}")
        return self.queues[-1]

    def exchange(self, stem: str) -> str:
        self.exchanges.append(f"{stem}-{self.tag}")
        return self.exchanges[-1]


@pytest.fixture
def names(url: str) -> Iterator[Names]:
    n = Names()
    yield n
    for app in n.apps:
        app.close()
    gone = {x for q in n.queues for x in [q, *(delay_queue(i, q) for i in range(28))]}
    amqp_support.delete_queues(url, gone)
    amqp_support.delete_exchanges(url, n.exchanges)


def make_app(url: str, names: Names, queues: list[Any], **conf: Any) -> Celeriac:
    app = Celeriac("proj", broker_url=url, task_queues=queues, **conf)
    names.apps.append(app)
    return app


def collect(app: Celeriac, queues: list[str], want: int, timeout: float = 5) -> list[Delivery]:
    got: list[Delivery] = []
    deadline = time.monotonic() + timeout
    while len(got) < want and time.monotonic() < deadline:
        got += app.broker.fetch(queues, 100, timeout=0.2)
    got += app.broker.fetch(queues, 100, timeout=0.3)  # and nothing more arrives
    app.broker.ack(got)
    return got


def test_topic_route_reaches_only_matching_queues(url: str, names: Names) -> None:
    media = Exchange(names.exchange("media"), type="topic")
    images, video, everything = names.queue("images"), names.queue("video"), names.queue("all")
    app = make_app(
        url,
        names,
        [
            Queue(images, media, routing_key="media.image.*"),
            Queue(video, media, routing_key="media.video.*"),
            Queue(everything, media, routing_key="media.#"),
        ],
        task_routes={"proj.resize": {"exchange": media.name, "routing_key": "media.image.png"}},
    )
    png = app.send_task("proj.resize").id
    mp4 = app.send_task("proj.encode", exchange=media.name, routing_key="media.video.mp4").id
    got = collect(app, [images, video, everything], 4)
    assert sorted((d.queue, d.message.task_id) for d in got) == sorted(
        [(images, png), (everything, png), (video, mp4), (everything, mp4)]
    )

    def bindings(ch: Any) -> Any:
        return ch.queue_declare(images, passive=True).message_count

    assert raw(url, bindings) == 0
    # a key no queue is bound for: RabbitMQ returns it, and that is an error, not a drop
    with pytest.raises(BrokerError, match="route"):
        app.send_task("proj.x", exchange=media.name, routing_key="other.thing")


def test_task_routes_with_a_named_direct_exchange_and_a_countdown(url: str, names: Names) -> None:
    office = Exchange(names.exchange("office"))
    reports = names.queue("reports")
    app = make_app(
        url,
        names,
        [Queue(reports, office, routing_key="report.daily")],
        task_routes={"proj.report": {"exchange": office.name, "routing_key": "report.daily"}},
    )
    now = app.send_task("proj.report").id
    later = app.send_task("proj.report", countdown=1).id
    got = collect(app, [reports], 2, timeout=6)
    assert [d.message.task_id for d in got] == [now, later]

    def exchange_of(ch: Any) -> Any:
        ch.exchange_declare(office.name, "direct", durable=True, passive=True)
        return True

    assert raw(url, exchange_of)


def test_broadcast_reaches_each_worker_once(url: str, names: Names) -> None:
    reload = Broadcast(names.exchange("reload"))
    apps = [
        make_app(url, names, [reload], worker_hostname=f"w{i}-{names.tag}@test") for i in (1, 2)
    ]
    names.queues += [a.topology.physical(reload.name) for a in apps]
    for app in apps:  # subscribe: RabbitMQ binds each node's queue to the fanout
        assert app.broker.fetch([reload.name], 1, timeout=0.1) == []
    producer = make_app(url, names, [reload])
    sent = [producer.send_task("proj.reload", queue=reload.name).id for _ in range(3)]
    for app in apps:
        got = collect(app, [reload.name], 3)
        assert [d.message.task_id for d in got] == sent
        assert {d.queue for d in got} == {reload.name}


def test_broadcast_with_no_worker_listening_is_an_error(url: str, names: Names) -> None:
    producer = make_app(url, names, [Broadcast(names.exchange("nobody"))])
    with pytest.raises(BrokerError, match="route"):
        producer.send_task("proj.reload", queue=f"nobody-{names.tag}")


def test_quorum_queue_is_declared_and_a_task_round_trips(url: str, names: Names) -> None:
    jobs = names.queue("quorum")
    app = make_app(
        url, names, [Queue(jobs, queue_arguments={"x-queue-type": "quorum"}, max_priority=10)]
    )
    sent = app.send_task("proj.job", queue=jobs, priority=3).id

    def kind(ch: Any) -> Any:
        # declaring it again as a classic queue must fail if it really is a quorum queue
        try:
            ch.queue_declare(jobs, durable=True, auto_delete=False)
        except Exception as exc:
            return str(exc)
        return "classic"

    assert "x-queue-type" in raw(url, kind)
    first: list[Delivery] = []
    deadline = time.monotonic() + 5
    while not first and time.monotonic() < deadline:
        first = app.broker.fetch([jobs], 1, timeout=0.2)
    assert [d.message.task_id for d in first] == [sent] and first[0].delivery_count == 1
    app.broker.requeue(first[0])  # back in place; RabbitMQ counts it (x-delivery-count)
    again: list[Delivery] = []
    deadline = time.monotonic() + 5
    while not again and time.monotonic() < deadline:
        again = app.broker.fetch([jobs], 1, timeout=0.2)  # same prefetch: no re-subscribe
    assert [(d.message.task_id, d.delivery_count) for d in again] == [(sent, 2)]
    app.broker.ack(again)


def test_task_queue_max_priority_declares_x_max_priority(url: str, names: Names) -> None:
    plain = names.queue("prio")
    app = make_app(url, names, [], task_queue_max_priority=10)
    for p in (1, 9, 5):
        app.send_task("proj.p", queue=plain, priority=p, task_id=f"p{p}-{names.tag}")
    got = collect(app, [plain], 3)
    assert [d.message.task_id.split("-")[0] for d in got] == ["p9", "p5", "p1"]

    def redeclare(ch: Any) -> str:
        try:
            ch.queue_declare(plain, durable=True, auto_delete=False)
        except Exception as exc:
            return str(exc)
        return "same arguments"

    assert "x-max-priority" in raw(url, redeclare)


def test_a_broadcast_queue_stays_classic_when_queues_are_quorum(url: str, names: Names) -> None:
    reload = Broadcast(names.exchange("reload"))
    app = Celeriac(
        "proj",
        broker_url=url,
        task_queues=[reload],
        worker_hostname=f"q-{names.tag}@test",
        broker_transport_options={"queue_type": "quorum"},
    )
    names.apps.append(app)
    names.queues.append(app.topology.physical(reload.name))
    assert app.broker.fetch([reload.name], 1, timeout=0.1) == []
    sent = app.send_task("proj.reload", queue=reload.name).id
    assert [d.message.task_id for d in collect(app, [reload.name], 1)] == [sent]
