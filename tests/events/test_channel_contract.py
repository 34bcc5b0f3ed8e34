"""One contract for every event channel (see celeriac.events.channel), with no mocks."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from celeriac.events.channel import Event, EventChannel, Subscription, topic_matches
from celeriac.transports import EventConfig, transport_class
from tests import amqp_support, postgres_support, redis_support
from tests.amqp_support import amqp_vhost  # noqa: F401 - a fixture

MakeChannel = Callable[[], EventChannel]


@pytest.fixture(
    params=[
        "memory",
        "sqlite",
        pytest.param("redis", marks=pytest.mark.redis),
        pytest.param("amqp", marks=pytest.mark.amqp),
        pytest.param("postgres", marks=pytest.mark.postgres),
    ]
)
def make_channel(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[MakeChannel]:
    url = "memory://" if request.param == "memory" else f"sqlite:///{tmp_path}/e.db"
    if request.param == "redis":
        url = redis_support.url_with_prefix(prefix := redis_support.new_prefix())
        request.addfinalizer(lambda: redis_support.drop(prefix))
    if request.param == "amqp":
        url = amqp_support.url_for(request.getfixturevalue("amqp_vhost"))
    if request.param == "postgres":
        url = postgres_support.postgres_url(request)
    transport = transport_class(url)(url)
    yield lambda: transport.events(EventConfig())
    transport.close()


@pytest.fixture
def group() -> str:
    """A group of event types of this test's own: the AMQP vhost is shared by the session."""
    return f"g{uuid.uuid4().hex[:10]}"


def ev(kind: str, n: int) -> Event:
    return {"type": kind, "hostname": "n1@h", "n": n, "clock": n, "timestamp": 1.5}


def receive_n(sub: Subscription, n: int, timeout: float = 5.0) -> list[Event]:
    out: list[Event] = []
    deadline = time.monotonic() + timeout
    while len(out) < n and time.monotonic() < deadline:
        out.extend(sub.receive(0.2))
    return out


def test_a_single_event_arrives_as_sent(make_channel: MakeChannel, group: str) -> None:
    channel = make_channel()
    with channel.subscribe([f"{group}.#"]) as sub:
        channel.publish([ev(f"{group}-online", 1)])
        assert receive_n(sub, 1) == [ev(f"{group}-online", 1)]


def test_a_batch_arrives_as_single_events_in_order(make_channel: MakeChannel, group: str) -> None:
    channel = make_channel()
    batch = [ev(f"{group}-received", 1), ev(f"{group}-started", 2), ev(f"{group}-done", 3)]
    with channel.subscribe([f"{group}.#"]) as sub:
        channel.publish(batch)
        channel.publish([ev(f"{group}-done", 4)])
        assert receive_n(sub, 4) == [*batch, ev(f"{group}-done", 4)]


def test_patterns_select_by_routing_key(make_channel: MakeChannel, group: str) -> None:
    channel = make_channel()
    other = f"{group}x"
    with (
        channel.subscribe([f"{group}.heartbeat"]) as beats,
        channel.subscribe([f"{group}.#", f"{other}.*"]) as everything,
    ):
        channel.publish([ev(f"{group}-online", 1)])
        channel.publish([ev(f"{group}-heartbeat", 2)])
        channel.publish([ev(f"{other}-a", 3), ev(f"{other}-b", 4)])  # {other}.multi
        channel.publish([ev(f"{group}x2-nobody", 5)])
        assert [e["n"] for e in receive_n(everything, 4)] == [1, 2, 3, 4]
        assert [e["n"] for e in receive_n(beats, 1)] == [2]
        assert everything.receive(0.3) == [] and beats.receive(0.1) == []


def test_only_events_published_after_subscribing_arrive(
    make_channel: MakeChannel, group: str
) -> None:
    channel = make_channel()
    channel.publish([ev(f"{group}-early", 1)])
    with channel.subscribe([f"{group}.#"]) as sub:
        channel.publish([ev(f"{group}-late", 2)])
        assert [e["n"] for e in receive_n(sub, 1)] == [2]
        assert sub.receive(0.3) == []


def test_every_subscriber_gets_its_copy_across_channels(
    make_channel: MakeChannel, group: str
) -> None:
    sender, listener = make_channel(), make_channel()
    with listener.subscribe([f"{group}.#"]) as a, listener.subscribe(["#"]) as b:
        sender.publish([ev(f"{group}-x", 1)])
        assert [e["n"] for e in receive_n(a, 1)] == [1]
        assert [e["n"] for e in receive_n(b, 1) if e["type"] == f"{group}-x"] == [1]


def test_receive_waits_no_longer_than_its_timeout(make_channel: MakeChannel, group: str) -> None:
    channel = make_channel()
    with channel.subscribe([f"{group}.#"]) as sub:
        started = time.monotonic()
        assert sub.receive(0.3) == []
        assert 0.25 <= time.monotonic() - started < 1.5


def test_topic_matching() -> None:
    assert topic_matches("#", "task.multi")
    assert topic_matches("task.#", "task") and topic_matches("task.#", "task.multi")
    assert topic_matches("*.heartbeat", "worker.heartbeat")
    assert not topic_matches("worker.*", "task.multi")
    assert not topic_matches("*", "worker.heartbeat")
    assert topic_matches("a.#.z", "a.z") and topic_matches("a.#.z", "a.b.c.z")


def test_a_grouped_batch_of_one_goes_as_multi(make_channel: MakeChannel, group: str) -> None:
    channel = make_channel()
    with channel.subscribe([f"{group}.multi"]) as multi:
        channel.publish([ev(f"{group}-done", 1)], grouped=True)
        channel.publish([ev(f"{group}-done", 2)])  # {group}.done
        assert [e["n"] for e in receive_n(multi, 1)] == [1]
        assert multi.receive(0.3) == []
