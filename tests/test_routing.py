"""Exchange/Queue/Broadcast config objects, route resolution, and routing on the local brokers."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from celeriac import Broadcast, Celeriac, ConfigurationError, Exchange, Queue
from celeriac.exceptions import BrokerError
from celeriac.protocol.publication import Publication, Route
from celeriac.routing import Topology, kombu_topic_pattern, topic_matches

MEDIA = Exchange("media", type="topic")
QUEUES = [
    Queue("images", MEDIA, routing_key="media.image.#"),
    Queue("video", MEDIA, routing_key="media.video.*"),
    Queue("all_media", MEDIA, routing_key="media.#"),
    Queue("reports", Exchange("office"), routing_key="report"),
    Broadcast("reload"),
]


def make_app(url: str = "memory://", **conf: Any) -> Celeriac:
    app = Celeriac("proj", broker_url=url, task_queues=QUEUES, **conf)

    @app.task(name="proj.t")
    def t() -> None: ...

    return app


def fetch_all(app: Celeriac, queue: str) -> list[str]:
    got = app.broker.fetch([queue], 100, timeout=0.05)
    app.broker.ack(got)
    return [d.message.task_id for d in got]


def test_queue_defaults_follow_kombu() -> None:
    q = Queue("plain")
    assert q.exchange == Exchange("plain", "direct") and q.routing_key == "plain"
    assert Queue("x", "ex").exchange == Exchange("ex")
    assert Queue("p", max_priority=10, queue_arguments={"x-queue-type": "classic"}).arguments() == {
        "x-queue-type": "classic",
        "x-max-priority": 10,
    }
    b = Broadcast("reload")
    assert b.broadcast and b.exchange == Exchange("reload", "fanout") and b.auto_delete
    with pytest.raises(ConfigurationError, match="type must be one of"):
        Exchange("e", type="headers")
    with pytest.raises(ConfigurationError, match="fanout"):
        Broadcast("b", exchange=Exchange("b", "direct"))


def test_topic_matching_is_amqps() -> None:
    assert topic_matches("media.#", "media") and topic_matches("media.#", "media.a.b")
    assert topic_matches("*.image.*", "media.image.png")
    assert not topic_matches("media.*", "media.a.b") and not topic_matches("media.*", "media")
    assert topic_matches("#", "anything.at.all") and topic_matches("a.#.z", "a.z")
    assert kombu_topic_pattern("media.image.#") == r"^media\.image\..*?$"
    assert kombu_topic_pattern("a-b.*") == r"^a\-b\.[^\.]+$"


def test_kombu_queue_objects_are_read_by_attribute() -> None:
    kombu = pytest.importorskip("kombu")
    from kombu.common import Broadcast as KombuBroadcast

    app = Celeriac(
        "proj",
        broker_url="memory://",
        task_queues=[
            kombu.Queue("images", kombu.Exchange("media", type="topic"), routing_key="media.#"),
            kombu.Queue("plain"),
            KombuBroadcast("reload"),
            kombu.Queue("shared", kombu.Exchange("fan", type="fanout")),
        ],
    )
    topo = app.topology
    assert topo.queues["images"] == Queue("images", MEDIA, routing_key="media.#")
    assert topo.queues["plain"].exchange == Exchange("plain")
    assert topo.is_broadcast("reload")
    # a plain queue on a fanout exchange is one queue for all (RabbitMQ), not a broadcast
    assert not topo.is_broadcast("shared") and topo.fanout_bound("shared")


def test_celerys_dict_form_of_task_queues() -> None:
    app = Celeriac(
        "proj",
        broker_url="memory://",
        task_queues={
            "images": {"exchange": "media", "exchange_type": "topic", "binding_key": "m.#"}
        },
    )
    assert app.topology.queues["images"] == Queue("images", MEDIA, routing_key="m.#")


def test_routes_resolve_as_celery_sends() -> None:
    topo = Topology({q.name: q for q in QUEUES})
    assert topo.destination("unknown") == Route("unknown")
    # a queue on a direct exchange goes through the default exchange, as Celery does
    assert topo.destination("reports") == Route("reports")
    assert topo.destination("reports").exchange is None
    images = topo.destination("images")
    assert (images.exchange, images.routing_key, images.exchange_type) == (
        "media",
        "media.image.#",
        "topic",
    )
    d = topo.destination(None, "media", "media.video.mp4")
    assert (d.name, d.exchange_type, d.routing_key) == ("media", "topic", "media.video.mp4")
    d = topo.destination("celery", "office", "report")
    assert d.exchange == "office" and d.exchange_type == "direct"
    b = topo.destination("reload")
    assert (b.exchange, b.exchange_type) == ("reload", "fanout")
    assert topo.bound(topo.destination(None, "media", "media.image.png")) == [
        "images",
        "all_media",
    ]


def test_missing_queues_are_refused_when_task_create_missing_queues_is_off() -> None:
    app = make_app(task_create_missing_queues=False)
    with pytest.raises(ConfigurationError, match="did you mean 'images'"):
        app.send_task("proj.t", queue="imagse")
    # an exchange and a routing key need no queue (the default one is not in task_queues)
    sent = app.send_task("proj.t", exchange="media", routing_key="media.video.x").id
    assert fetch_all(app, "video") == [sent]


def test_task_routes_with_exchange_and_routing_key_on_the_memory_broker() -> None:
    app = make_app(
        task_routes={
            "proj.t": {"exchange": "media", "routing_key": "media.video.mp4"},
            "proj.r": {"queue": "reports"},
        }
    )
    video = app.send_task("proj.t").id
    report = app.send_task("proj.r").id
    assert fetch_all(app, "video") == [video]
    assert fetch_all(app, "all_media") == [video]
    assert fetch_all(app, "images") == []
    assert fetch_all(app, "reports") == [report]
    # apply_async's options win over the route
    other = app.send_task("proj.t", routing_key="media.image.png").id
    assert fetch_all(app, "images") == [other] and fetch_all(app, "video") == []


def test_topic_routing_on_sqlite_resolves_bindings_at_publish(tmp_path: Path) -> None:
    app = make_app(f"sqlite:///{tmp_path / 'b.db'}")
    try:
        sent = app.send_task("proj.t", exchange="media", routing_key="media.image.png").id
        delayed = app.send_task(
            "proj.t", exchange="media", routing_key="media.image.png", countdown=0.1
        ).id
        assert fetch_all(app, "images") == [sent] and fetch_all(app, "all_media") == [sent]
        assert fetch_all(app, "video") == []
        got = app.broker.fetch(["images", "all_media"], 10, timeout=2)
        while len(got) < 2:
            got += app.broker.fetch(["images", "all_media"], 10, timeout=2)
        assert {(d.queue, d.message.task_id) for d in got} == {
            ("images", delayed),
            ("all_media", delayed),
        }
        app.broker.ack(got)
    finally:
        app.close()


@pytest.mark.parametrize("url", ["memory://", "sqlite"])
def test_local_brokers_refuse_what_they_cannot_route(url: str, tmp_path: Path) -> None:
    app = make_app(url if url != "sqlite" else f"sqlite:///{tmp_path / 'b.db'}")
    try:
        with pytest.raises(ConfigurationError, match="pub/sub"):
            app.send_task("proj.t", queue="reload")
        with pytest.raises(ConfigurationError, match="pub/sub"):
            app.broker.fetch(["reload"], 1, timeout=0)
        with pytest.raises(BrokerError, match="no queue is bound"):
            app.send_task("proj.t", exchange="media", routing_key="other.thing")
        with pytest.raises(ConfigurationError, match="not declared"):
            app.send_task("proj.t", exchange="nowhere", routing_key="x")
    finally:
        app.close()


def test_broker_publish_takes_a_route_by_exchange_and_routing_key() -> None:
    app = make_app()
    message = app.prepare_message("proj.t").message
    app.broker.publish(Publication(message, app.topology.destination(None, "office", "report")))
    assert fetch_all(app, "reports") == [message.task_id]


def test_the_app_sees_each_new_task_queues_value() -> None:
    from celeriac import Celeriac
    from celeriac.routing import Queue

    app = Celeriac("t", broker="memory://")
    for i in range(200):
        app.conf.update(task_queues=[Queue(f"q{i}")])
        assert list(app.topology.queues) == [f"q{i}"]
        app.conf.update(task_queues=None)  # frees the list: the next may get its address
