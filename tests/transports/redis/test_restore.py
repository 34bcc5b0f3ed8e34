"""Putting a message back on its queue: where kombu would put it, and never lost on the way.

Deliveries a Celery worker abandoned are recorded by kombu as ``[envelope, exchange,
routing_key]`` in ``unacked``; Celeriac restores them after ``celery_visibility_timeout``.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator

import pytest

from celeriac.brokers import create_broker
from celeriac.protocol.message import Message, build_task_message
from celeriac.protocol.publication import Publication, Route
from celeriac.protocol.serializers import default_registry
from celeriac.transports.redis.broker import RedisBroker
from celeriac.transports.redis.envelope import encode_envelope
from tests import redis_support

pytestmark = pytest.mark.redis

SEP = "\x06\x16"
# Bindings as kombu writes them when a Celery worker declares its task_queues.
IMAGES = f"media.image.*{SEP}^media\\.image\\.[^\\.]+${SEP}images"
ALL_MEDIA = f"media.#{SEP}^media\\..*?${SEP}all_media"
REPORTS = f"report{SEP}{SEP}reports"


@pytest.fixture
def prefix() -> Iterator[str]:
    prefix = redis_support.new_prefix()
    yield prefix
    redis_support.drop(prefix)


@pytest.fixture
def broker(prefix: str) -> Iterator[RedisBroker]:
    url = redis_support.url_with_prefix(prefix)
    broker = create_broker(url, {"celery_visibility_timeout": 5, "sweep_interval": 0.05})
    assert isinstance(broker, RedisBroker)
    yield broker
    broker.close()


def msg(task_id: str) -> Message:
    return build_task_message(default_registry, task_name="t", task_id=task_id, args=(task_id,))


def abandon(broker: RedisBroker, task_id: str, exchange: str, routing_key: str) -> str:
    """What kombu writes when a Celery worker takes a message, ten seconds ago."""
    tag = f"celery-{task_id}"
    route = Route("unused", exchange or None, routing_key, "topic")
    envelope = json.loads(encode_envelope(msg(task_id), route, 0, tag))
    p, r = broker.prefix, broker.client
    r.hset(f"{p}unacked", tag, json.dumps([envelope, exchange, routing_key]))
    r.zadd(f"{p}unacked_index", {tag: time.time() - 10})
    return tag


def sweep(broker: RedisBroker) -> None:
    time.sleep(0.06)  # past the sweep interval
    assert broker.fetch(["nothing"], 1, timeout=0) == []


def test_a_topic_delivery_goes_back_to_the_queue_its_exchange_binds(
    broker: RedisBroker, prefix: str
) -> None:
    r = broker.client
    r.sadd(f"{prefix}_kombu.binding.media", IMAGES)
    tag = abandon(broker, "png", "media", "media.image.png")
    sweep(broker)
    assert not r.exists(f"{prefix}media.image.png")  # not a list named after the key
    [d] = broker.fetch(["images"], 10, timeout=0)
    assert (d.message.task_id, d.tag[1]) == ("png", tag)
    assert d.delivery_count == 2  # a Celery worker had it once
    assert r.hlen(f"{prefix}unacked") == 1  # now leased by us, under its own tag


def test_a_named_direct_exchange_is_resolved_through_its_bindings(
    broker: RedisBroker, prefix: str
) -> None:
    broker.client.sadd(f"{prefix}_kombu.binding.office", REPORTS)
    abandon(broker, "r", "office", "report")
    sweep(broker)
    assert [d.message.task_id for d in broker.fetch(["reports"], 10, timeout=0)] == ["r"]


def test_every_queue_the_exchange_binds_gets_it_back_as_with_kombu(
    broker: RedisBroker, prefix: str
) -> None:
    broker.client.sadd(f"{prefix}_kombu.binding.media", IMAGES, ALL_MEDIA)
    abandon(broker, "png", "media", "media.image.png")
    abandon(broker, "doc", "media", "media.doc")
    sweep(broker)
    got = broker.fetch(["images", "all_media"], 10, timeout=0)
    assert sorted((d.queue, d.message.task_id) for d in got) == [
        ("all_media", "doc"),
        ("all_media", "png"),
        ("images", "png"),
    ]


def test_a_delivery_no_queue_is_bound_for_is_dead_lettered(
    broker: RedisBroker, prefix: str
) -> None:
    broker.client.sadd(f"{prefix}_kombu.binding.media", IMAGES)
    abandon(broker, "lost", "media", "media.video.mp4")
    abandon(broker, "gone", "vanished", "x")
    sweep(broker)
    reasons = {d.message.task_id: d.reason for d in broker.dead_letters()}
    assert reasons == {
        "lost": "restoring it: exchange 'media' routes 'media.video.mp4' to no queue",
        "gone": "restoring it: exchange 'vanished' routes 'x' to no queue",
    }
    assert broker.client.hlen(f"{prefix}unacked") == 0


def test_a_restore_onto_a_key_of_another_type_dead_letters_it(
    broker: RedisBroker, prefix: str
) -> None:
    r = broker.client
    r.sadd(f"{prefix}_kombu.binding.media", IMAGES)
    r.set(f"{prefix}images", "someone else's string")
    abandon(broker, "png", "media", "media.image.png")
    sweep(broker)
    [dead] = broker.dead_letters()
    assert (dead.message.task_id, dead.queue) == ("png", "images")
    assert dead.reason == f"cannot put it back on {prefix}images: that key holds a string"
    assert r.hlen(f"{prefix}unacked") == 0
    assert r.zcard(f"{prefix}unacked_index") == 0


def test_an_expired_lease_onto_a_key_of_another_type_is_dead_lettered(
    broker: RedisBroker, prefix: str
) -> None:
    broker.publish(Publication(msg("a"), Route("q")))
    [d] = broker.fetch(["q"], 1, timeout=0)
    r = broker.client
    r.hset(f"{prefix}q", "field", "value")  # the queue's key now holds a hash
    broker.requeue(d)
    [dead] = broker.dead_letters()
    assert dead.message.task_id == "a"
    assert dead.reason == f"cannot put it back on {prefix}q: that key holds a hash"
    assert r.hlen(f"{prefix}unacked") == 0


def test_a_due_message_onto_a_key_of_another_type_does_not_stop_fetching(
    broker: RedisBroker, prefix: str
) -> None:
    broker.publish(Publication(msg("later"), Route("q"), eta=time.time() + 0.05))
    broker.publish(Publication(msg("ready"), Route("other")))
    r = broker.client
    r.sadd(f"{prefix}q", "a set")
    time.sleep(0.1)
    assert [d.message.task_id for d in broker.fetch(["other"], 10, timeout=0)] == ["ready"]
    [dead] = broker.dead_letters()
    assert dead.message.task_id == "later"
    assert dead.reason == f"cannot put it back on {prefix}q: that key holds a set"
    assert r.zcard(f"{prefix}celeriac.delayed.q") == 0
