"""One contract for every broker: leased, at-least-once delivery (see celeriac.brokers.base)."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from celeriac.brokers import Broker, create_broker
from celeriac.protocol.message import Message, build_task_message
from celeriac.protocol.publication import Publication, Route
from celeriac.protocol.serializers import default_registry
from tests import amqp_support, postgres_support, redis_support
from tests.amqp_support import amqp_vhost  # noqa: F401 - a fixture

LEASE = 0.3  # short visibility timeout for the lease tests
MakeBroker = Callable[..., Broker]


_LEASE_EXPIRY = ("expired_lease", "stale_ack", "stale_requeue")


@pytest.fixture(
    params=[
        "memory",
        "sqlite",
        pytest.param("redis", marks=pytest.mark.redis),
        pytest.param("amqp", marks=pytest.mark.amqp),
        pytest.param("postgres", marks=pytest.mark.postgres),
    ]
)
def make_broker(request: pytest.FixtureRequest, tmp_path: Path):
    made: list[Broker] = []
    url = "memory://" if request.param == "memory" else f"sqlite:///{tmp_path}/b.db"
    defaults: dict[str, float] = {}
    if request.param == "amqp":
        if any(name in request.node.name for name in _LEASE_EXPIRY):
            pytest.skip("on RabbitMQ the lease is the channel (no timeout): test_amqp.py")
        url = amqp_support.url_for(request.getfixturevalue("amqp_vhost"))
        defaults = {"max_priority": 10}

        def cleanup() -> None:
            names = set().union(*(amqp_support.queues_of(b) for b in made))
            if names:
                amqp_support.delete_queues(url, names)

        request.addfinalizer(cleanup)
    if request.param == "redis":
        url = redis_support.url_with_prefix(prefix := redis_support.new_prefix())
        request.addfinalizer(lambda: redis_support.drop(prefix))
    if request.param == "postgres":
        url = postgres_support.postgres_url(request)

    def make(**transport_options: float) -> Broker:
        broker = create_broker(url, {**defaults, **transport_options})
        made.append(broker)
        return broker

    yield make
    for broker in made:
        broker.close()


@pytest.fixture
def broker(make_broker: MakeBroker) -> Broker:
    return make_broker()


@pytest.fixture
def leasing(make_broker: MakeBroker) -> Broker:
    return make_broker(visibility_timeout=LEASE)


def msg(task_id: str) -> Message:
    return build_task_message(default_registry, task_name="t", task_id=task_id, args=(task_id,))


def ids(deliveries) -> list[str]:
    return [d.message.task_id for d in deliveries]


def test_publish_fetch_ack(broker: Broker) -> None:
    sent = msg("a")
    broker.publish(Publication(sent, Route("q")))
    [d] = broker.fetch(["q"], 10, timeout=0)
    assert (d.queue, d.delivery_count, d.redelivered) == ("q", 1, False)
    got = d.message
    assert (got.headers, got.properties, got.body) == (sent.headers, sent.properties, sent.body)
    assert (got.content_type, got.content_encoding) == (sent.content_type, sent.content_encoding)
    assert broker.fetch(["q"], 10, timeout=0) == []  # leased: nobody else gets it
    broker.ack([d])
    assert broker.depth("q") == 0
    assert broker.fetch(["q"], 10, timeout=0) == []


def test_ack_and_fetch_acks_the_old_batch_and_leases_the_next(broker: Broker) -> None:
    for task_id in "abc":
        broker.publish(Publication(msg(task_id), Route("q")))
    first = broker.fetch(["q"], 2, timeout=0)
    assert ids(first) == ["a", "b"]
    [third] = broker.ack_and_fetch(first, ["q"], 2, timeout=1)
    assert third.message.task_id == "c"
    assert broker.ack_and_fetch([third], ["q"], 2, timeout=0) == []
    assert broker.ack_and_fetch([], ["q"], 0, timeout=0) == []
    assert broker.depth("q") == 0


def test_ack_and_fetch_with_no_room_still_acks(broker: Broker) -> None:
    broker.publish(Publication(msg("a"), Route("q")))
    broker.publish(Publication(msg("b"), Route("q")))
    [d] = broker.fetch(["q"], 1, timeout=0)
    assert broker.ack_and_fetch([d], ["q"], 0, timeout=0) == []
    assert broker.depth("q") == 1  # "a" acked, "b" still ready


def urgency(broker: Broker, level: int) -> int:
    """The priority number meaning ``level`` (0 low .. 9 urgent) on this broker."""
    return level if broker.priority_higher_first else 9 - level


def test_fifo_within_a_priority_and_urgent_first(broker: Broker) -> None:
    for task_id, level in [("a", 0), ("b", 0), ("H1", 9), ("c", 0), ("H2", 9), ("m", 5)]:
        broker.publish(Publication(msg(task_id), Route("q"), priority=urgency(broker, level)))
    assert ids(broker.fetch(["q"], 10, timeout=0)) == ["H1", "H2", "m", "a", "b", "c"]


def test_priority_order_one_at_a_time(broker: Broker) -> None:
    for task_id, level in [("low", 0), ("high", 9), ("low2", 0)]:
        broker.publish(Publication(msg(task_id), Route("q"), priority=urgency(broker, level)))
    got = [ids(broker.fetch(["q"], 1, timeout=0)) for _ in range(3)]
    assert got == [["high"], ["low"], ["low2"]]


def test_delayed_message_waits_for_its_eta(broker: Broker) -> None:
    eta = time.time() + 0.3
    broker.publish(Publication(msg("later"), Route("q"), eta=eta))
    broker.publish(Publication(msg("now"), Route("q")))
    assert ids(broker.fetch(["q"], 10, timeout=0)) == ["now"]
    assert broker.depth("q") == 2
    [d] = broker.fetch(["q"], 10, timeout=3)
    assert d.message.task_id == "later"
    assert time.time() >= eta


def test_ready_counts_what_a_fetch_could_take_now(make_broker: MakeBroker) -> None:
    consumer, producer = make_broker(), make_broker()
    consumer.publish(Publication(msg("later"), Route("q"), eta=time.time() + 60))
    consumer.publish(Publication(msg("a"), Route("q")))
    assert ids(consumer.fetch(["q"], 10, timeout=0)) == ["a"]
    consumer.stop_consuming(["q"])  # a push broker would otherwise prefetch what comes next
    for task_id in "bc":
        producer.publish(Publication(msg(task_id), Route("q")))
    # "a" is leased and "later" delayed: waiting work is "b" and "c" only.
    assert producer.ready("q") == 2


def test_eta_in_the_past_is_ready_at_once(broker: Broker) -> None:
    broker.publish(Publication(msg("late"), Route("q"), eta=time.time() - 60))
    assert ids(broker.fetch(["q"], 10, timeout=0)) == ["late"]


def test_expired_lease_is_redelivered(leasing: Broker) -> None:
    leasing.publish(Publication(msg("a"), Route("q")))
    [first] = leasing.fetch(["q"], 10, timeout=0)
    started = time.time()
    [again] = leasing.fetch(["q"], 10, timeout=3)
    assert time.time() - started >= LEASE * 0.9
    assert again.message.task_id == "a"
    assert (again.delivery_count, again.redelivered) == (2, True)
    assert first.delivery_count == 1


def test_extend_keeps_the_lease(leasing: Broker) -> None:
    leasing.publish(Publication(msg("a"), Route("q")))
    [d] = leasing.fetch(["q"], 10, timeout=0)
    deadline = time.time() + 2 * LEASE
    while time.time() < deadline:
        leasing.extend([d])
        assert leasing.fetch(["q"], 10, timeout=LEASE / 3) == []
    leasing.ack([d])
    assert leasing.depth("q") == 0


def test_stale_ack_does_not_delete_the_new_lease_holders_copy(leasing: Broker) -> None:
    leasing.publish(Publication(msg("a"), Route("q")))
    [stale] = leasing.fetch(["q"], 10, timeout=0)
    [current] = leasing.fetch(["q"], 10, timeout=3)  # the first lease ran out
    leasing.ack([stale])
    assert leasing.depth("q") == 1
    leasing.extend([stale])  # a stale handle cannot renew the new holder's lease either
    assert leasing.fetch(["q"], 10, timeout=0) == []
    leasing.ack([current])
    assert leasing.depth("q") == 0


def test_stale_requeue_and_dead_letter_leave_the_new_lease_alone(leasing: Broker) -> None:
    leasing.publish(Publication(msg("a"), Route("q")))
    [stale] = leasing.fetch(["q"], 10, timeout=0)
    [current] = leasing.fetch(["q"], 10, timeout=3)
    leasing.requeue(stale)
    leasing.dead_letter(stale, "gave up late")
    assert leasing.dead_letters() == []  # not both dead and running elsewhere
    assert leasing.fetch(["q"], 10, timeout=0) == []
    leasing.ack([current])
    assert leasing.depth("q") == 0


def test_requeue_counts_unless_told_not_to(broker: Broker) -> None:
    broker.publish(Publication(msg("a"), Route("q")))
    [d] = broker.fetch(["q"], 10, timeout=0)
    broker.requeue(d, count=False)  # e.g. a worker shutting down returns its prefetch
    [d] = broker.fetch(["q"], 10, timeout=0)
    assert d.delivery_count == 1
    broker.requeue(d)
    [d] = broker.fetch(["q"], 10, timeout=0)
    assert d.delivery_count == 2


def test_requeue_keeps_fifo_position_where_the_broker_can(broker: Broker) -> None:
    broker.publish(Publication(msg("a"), Route("q")))
    broker.publish(Publication(msg("b"), Route("q")))
    [a] = broker.fetch(["q"], 1, timeout=0)
    broker.requeue(a)
    # RabbitMQ pushes deliveries asynchronously: collect until both are back, then check order.
    got: list[str] = []
    deadline = time.monotonic() + 5
    while len(got) < 2 and time.monotonic() < deadline:
        got += ids(broker.fetch(["q"], 10, timeout=0.2))
    assert got == (["a", "b"] if broker.requeue_keeps_place else ["b", "a"])


def test_requeue_with_delay(broker: Broker) -> None:
    broker.publish(Publication(msg("a"), Route("q")))
    [d] = broker.fetch(["q"], 10, timeout=0)
    until = time.time() + 0.3
    broker.requeue(d, delay_until=until)
    assert broker.fetch(["q"], 10, timeout=0) == []
    assert broker.depth("q") == 1
    [d] = broker.fetch(["q"], 10, timeout=3)
    assert time.time() >= until
    assert (d.message.task_id, d.delivery_count) == ("a", 2)


def test_dead_letters_replay_and_purge(broker: Broker) -> None:
    for task_id in ("a", "b", "c"):
        broker.publish(Publication(msg(task_id), Route("q")))
    a, b, c = broker.fetch(["q"], 10, timeout=0)
    broker.dead_letter(a, "boom")
    assert broker.depth("q") == 2
    [dead] = broker.dead_letters()
    assert (dead.queue, dead.reason, dead.message.task_id) == ("q", "boom", "a")
    assert dead.message.body == a.message.body
    assert dead.failed_at == pytest.approx(time.time(), abs=5)

    assert broker.replay_dead_letters() == 1
    assert broker.dead_letters() == []
    assert ids(broker.fetch(["q"], 10, timeout=0)) == ["a"]

    broker.dead_letter(b, "one")
    broker.dead_letter(c, "two")
    first, second = broker.dead_letters()
    assert (first.reason, second.reason) == ("one", "two")  # oldest first
    assert len(broker.dead_letters(limit=1)) == 1
    assert broker.replay_dead_letters([second.id]) == 1
    assert [d.reason for d in broker.dead_letters()] == ["one"]
    assert ids(broker.fetch(["q"], 10, timeout=0)) == ["c"]
    assert broker.replay_dead_letters([]) == 0
    assert broker.purge_dead_letters() == 1
    assert broker.dead_letters() == []


def test_purge_removes_ready_and_delayed_of_one_queue(broker: Broker) -> None:
    broker.publish(Publication(msg("a"), Route("q")))
    broker.publish(Publication(msg("b"), Route("q")))
    broker.publish(Publication(msg("later"), Route("q"), eta=time.time() + 60))
    broker.publish(Publication(msg("other"), Route("other")))
    assert broker.purge("q") == 3
    assert broker.depth("q") == 0
    assert broker.depth("other") == 1
    assert broker.fetch(["q"], 10, timeout=0) == []


def test_depth_counts_ready_delayed_and_leased(broker: Broker) -> None:
    assert broker.depth("q") == 0
    broker.publish(Publication(msg("a"), Route("q")))
    broker.publish(Publication(msg("b"), Route("q")))
    broker.publish(Publication(msg("later"), Route("q"), eta=time.time() + 60))
    [d] = broker.fetch(["q"], 1, timeout=0)
    assert broker.depth("q") == 3
    broker.ack([d])
    assert broker.depth("q") == 2


def test_fetch_limit_and_several_queues(broker: Broker) -> None:
    for i in range(3):
        broker.publish(Publication(msg(f"a{i}"), Route("a")))
    for i in range(2):
        broker.publish(Publication(msg(f"b{i}"), Route("b")))
    broker.publish(Publication(msg("c0"), Route("c")))
    got = broker.fetch(["a", "b"], 4, timeout=0)
    assert len(got) == 4
    assert all(d.message.task_id.startswith(d.queue) for d in got)
    rest = broker.fetch(["a", "b"], 4, timeout=0)
    assert sorted(ids(got + rest)) == ["a0", "a1", "a2", "b0", "b1"]
    assert ids(broker.fetch(["c"], 10, timeout=0)) == ["c0"]


def test_fetch_waits_for_a_publish_from_another_thread(broker: Broker) -> None:
    timer = threading.Timer(0.05, broker.publish, (Publication(msg("a"), Route("q")),))
    timer.start()
    try:
        assert ids(broker.fetch(["q"], 10, timeout=3)) == ["a"]
    finally:
        timer.cancel()


def test_two_sqlite_brokers_on_one_file_never_share_a_message(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/b.db"
    publisher, first, second = (create_broker(url) for _ in range(3))
    sent = {f"m{i}" for i in range(500)}
    for task_id in sorted(sent):
        publisher.publish(Publication(msg(task_id), Route("q")))
    got: dict[int, list[str]] = {0: [], 1: []}
    start = threading.Barrier(2)

    def consume(index: int, broker: Broker) -> None:
        start.wait()
        while batch := broker.fetch(["q"], 7, timeout=0):
            got[index].extend(ids(batch))
            broker.ack(batch)

    threads = [threading.Thread(target=consume, args=(i, b)) for i, b in enumerate([first, second])]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    a, b = set(got[0]), set(got[1])
    assert a | b == sent
    assert a & b == set()
    assert len(got[0]) + len(got[1]) == len(sent)
    assert publisher.depth("q") == 0
    for broker in (publisher, first, second):
        broker.close()


def test_publish_many_keeps_order_and_etas(broker: Broker) -> None:
    later = time.time() + 30
    broker.publish_many(
        [
            Publication(msg("a"), Route("q")),
            Publication(msg("later"), Route("q"), eta=later),
            Publication(msg("b"), Route("q")),
        ]
    )
    got: list[str] = []
    deadline = time.monotonic() + 5
    while len(got) < 2 and time.monotonic() < deadline:
        got += ids(broker.fetch(["q"], 10, timeout=0.2))
    assert got == ["a", "b"]
    assert broker.depth("q") == 3
