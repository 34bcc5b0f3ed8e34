"""What the Redis broker does beyond the shared contract: Celery's layout, byte for byte."""

from __future__ import annotations

import base64
import json
import time
from collections.abc import Iterator

import pytest

from celeriac.backends import EncodedResult
from celeriac.brokers import create_broker
from celeriac.protocol.message import Message, build_task_message
from celeriac.protocol.publication import Publication, Route
from celeriac.protocol.serializers import default_registry
from celeriac.transports import open_transport
from celeriac.transports.base import LookupCarriesResults
from celeriac.transports.redis.backend import RedisBackend
from celeriac.transports.redis.broker import RedisBroker
from celeriac.transports.redis.envelope import decode_envelope, encode_envelope
from tests import redis_support
from tests.json_support import spelled_alike

pytestmark = pytest.mark.redis

SEP = "\x06\x16"

# PROTOCOL.md §2.2, the captured list element (celery 5.7 / kombu 5.7), as kombu writes it.
CAPTURED = json.dumps(
    {
        "body": "W1syLCAzXSwge30sIHsiY2FsbGJhY2tzIjogbnVsbCwgImVycmJhY2tzIjogbnVsbCwgImNoYWluIjog"
        "bnVsbCwgImNob3JkIjogbnVsbH1d",
        "content-encoding": "utf-8",
        "content-type": "application/json",
        "headers": {
            "lang": "py",
            "task": "tasks.add",
            "id": "11111111-1111-1111-1111-111111111111",
            "shadow": None,
            "eta": None,
            "expires": None,
            "group": None,
            "group_index": None,
            "retries": 0,
            "timelimit": [None, None],
            "root_id": "11111111-1111-1111-1111-111111111111",
            "parent_id": None,
            "argsrepr": "(2, 3)",
            "kwargsrepr": "{}",
            "origin": "gen7660@vm",
            "ignore_result": False,
            "replaced_task_nesting": 0,
            "stamped_headers": None,
            "stamps": {},
        },
        "properties": {
            "correlation_id": "11111111-1111-1111-1111-111111111111",
            "reply_to": "5143d899-e3eb-33af-ae92-d6b6b222823b",
            "delivery_mode": 2,
            "delivery_info": {"exchange": "", "routing_key": "celery"},
            "priority": 0,
            "body_encoding": "base64",
            "delivery_tag": "6aed2ec2-cfc2-4047-9563-5f3672f877e4",
        },
    }
)


@pytest.fixture
def prefix() -> Iterator[str]:
    prefix = redis_support.new_prefix()
    yield prefix
    redis_support.drop(prefix)


@pytest.fixture
def broker(prefix: str) -> Iterator[RedisBroker]:
    broker = create_broker(
        redis_support.url_with_prefix(prefix), {"visibility_timeout": 0.3, "sweep_interval": 0.1}
    )
    assert isinstance(broker, RedisBroker)
    yield broker
    broker.close()


def msg(task_id: str) -> Message:
    return build_task_message(default_registry, task_name="t", task_id=task_id, args=(task_id,))


def ids(deliveries) -> list[str]:
    return [d.message.task_id for d in deliveries]


def test_envelope_is_celerys(json_path: str) -> None:
    """kombu's envelope: byte for byte through json, value for value (keys in kombu's order)
    through orjson."""
    captured = json.loads(CAPTURED)
    props = {
        k: v
        for k, v in captured["properties"].items()
        if k not in ("delivery_info", "body_encoding", "delivery_tag")
    }
    message = Message(
        captured["headers"],
        props,
        base64.b64decode(captured["body"]),
        "application/json",
        "utf-8",
    )
    tag = captured["properties"]["delivery_tag"]
    ours = encode_envelope(message, Route("celery"), 0, tag)
    if json_path == "json":
        assert ours == CAPTURED
    else:
        assert ours != CAPTURED and spelled_alike(ours) == CAPTURED
    back = decode_envelope(CAPTURED)
    assert (back.headers, back.properties, back.body) == (message.headers, props, message.body)


def test_publish_writes_celerys_list_and_binding(broker: RedisBroker, prefix: str) -> None:
    broker.publish(Publication(msg("a"), Route("q")))
    r = broker.client
    [raw] = r.lrange(f"{prefix}q", 0, -1)
    env = json.loads(raw)
    assert env["properties"]["delivery_info"] == {"exchange": "", "routing_key": "q"}
    assert env["properties"]["body_encoding"] == "base64"
    assert json.loads(base64.b64decode(env["body"]))[0] == ["a"]
    assert r.smembers(f"{prefix}_kombu.binding.q") == {f"q{SEP}{SEP}q".encode()}


def test_priority_buckets_and_lower_number_first(broker: RedisBroker, prefix: str) -> None:
    for task_id, priority in [("p0", 0), ("p2", 2), ("p3", 3), ("p5", 5), ("p6", 6), ("p9", 9)]:
        broker.publish(Publication(msg(task_id), Route("q"), priority=priority))
    r = broker.client
    lengths = {k: r.llen(f"{prefix}{k}") for k in ("q", f"q{SEP}3", f"q{SEP}6", f"q{SEP}9")}
    assert lengths == {"q": 2, f"q{SEP}3": 2, f"q{SEP}6": 1, f"q{SEP}9": 1}
    assert ids(broker.fetch(["q"], 10, timeout=0)) == ["p0", "p2", "p3", "p5", "p6", "p9"]


def test_fetch_records_the_lease_in_kombus_unacked_layout(broker: RedisBroker, prefix: str) -> None:
    broker.publish(Publication(msg("a"), Route("q")))
    raw = broker.client.lindex(f"{prefix}q", 0)
    before = time.time()
    [d] = broker.fetch(["q"], 10, timeout=0)
    queue, tag, count = d.tag
    r = broker.client
    assert (queue, count) == ("q", 1)
    # Exactly the popped element, wrapped as kombu wraps it: Celery can restore it.
    assert r.hget(f"{prefix}unacked", tag) == b"[" + raw + b', "", "q"]'
    assert r.zscore(f"{prefix}unacked_index", tag) == pytest.approx(before, abs=1)
    deadline = r.zscore(f"{prefix}celeriac.leases.q", tag)
    assert deadline == pytest.approx(before + 0.3, abs=1)
    assert r.hget(f"{prefix}celeriac.deliveries", tag) == b"1"
    assert r.llen(f"{prefix}q") == 0

    broker.extend([d])
    assert r.zscore(f"{prefix}celeriac.leases.q", tag) >= deadline
    broker.ack([d])
    assert not r.hexists(f"{prefix}unacked", tag)
    assert r.zscore(f"{prefix}unacked_index", tag) is None
    assert r.zscore(f"{prefix}celeriac.leases.q", tag) is None
    assert not r.hexists(f"{prefix}celeriac.deliveries", tag)


def test_expired_lease_goes_back_to_the_head_of_the_queue(broker: RedisBroker) -> None:
    broker.publish(Publication(msg("a"), Route("q")))
    assert ids(broker.fetch(["q"], 1, timeout=0)) == ["a"]
    broker.publish(Publication(msg("b"), Route("q")))
    time.sleep(0.5)  # the lease (0.3 s) runs out
    again = broker.fetch(["q"], 10, timeout=3)
    assert ids(again) == ["a", "b"]  # restored next in line, ahead of the newer message
    assert [d.delivery_count for d in again] == [2, 1]
    assert broker.client.hlen(f"{broker.prefix}unacked") == 2


def test_delayed_messages_wait_in_a_sorted_set(broker: RedisBroker, prefix: str) -> None:
    eta = time.time() + 0.3
    broker.publish(Publication(msg("later"), Route("q"), eta=eta))
    r = broker.client
    assert r.llen(f"{prefix}q") == 0
    [(member, score)] = r.zrange(f"{prefix}celeriac.delayed.q", 0, -1, withscores=True)
    assert score == pytest.approx(eta, abs=0.05)
    assert decode_envelope(member).task_id == "later"
    [d] = broker.fetch(["q"], 10, timeout=3)
    assert d.message.task_id == "later" and time.time() >= eta
    assert r.zcard(f"{prefix}celeriac.delayed.q") == 0


def test_an_eta_header_from_celery_is_parked_in_the_sorted_set(broker: RedisBroker) -> None:
    # What the worker does with a Celery client's countdown: requeue until the ETA.
    broker.publish(Publication(msg("celery-eta"), Route("q")))
    [d] = broker.fetch(["q"], 10, timeout=0)
    until = time.time() + 60
    broker.requeue(d, delay_until=until, count=False)
    r = broker.client
    [(_, score)] = r.zrange(f"{broker.prefix}celeriac.delayed.q", 0, -1, withscores=True)
    assert score == pytest.approx(until, abs=0.05)
    assert r.hlen(f"{broker.prefix}unacked") == 0
    assert broker.depth("q") == 1


def test_a_due_message_from_another_process_is_found_within_the_sweep(prefix: str) -> None:
    url = redis_support.url_with_prefix(prefix)
    producer, consumer = create_broker(url), create_broker(url, {"sweep_interval": 0.2})
    try:
        assert consumer.fetch(["q"], 10, timeout=0) == []  # the consumer has swept once
        producer.publish(Publication(msg("later"), Route("q"), eta=time.time() + 0.2))
        assert ids(consumer.fetch(["q"], 10, timeout=3)) == ["later"]
    finally:
        producer.close()
        consumer.close()


def test_garbage_on_the_list_is_dead_lettered_not_lost(broker: RedisBroker, prefix: str) -> None:
    r = broker.client
    r.lpush(f"{prefix}q", b"not json at all")
    r.lpush(f"{prefix}q", b'{"body": "!!!", "properties": {"body_encoding": "base64"}}')
    r.lpush(f"{prefix}q", b"[1, 2]")
    broker.publish(Publication(msg("good"), Route("q")))
    assert ids(broker.fetch(["q"], 10, timeout=0)) == ["good"]
    dead = {d.message.body: d for d in broker.dead_letters()}
    assert [d.queue for d in dead.values()] == ["q", "q", "q"]
    assert "not a JSON envelope" in dead[b"not json at all"].reason
    assert "not a kombu envelope" in dead[b"[1, 2]"].reason
    [bad_body] = [d for d in dead.values() if "unreadable envelope" in d.reason]
    assert "base64" in bad_body.reason
    assert r.hlen(f"{prefix}unacked") == 1  # only the good one is in flight


def test_envelope_without_delivery_tag_gets_one(broker: RedisBroker, prefix: str) -> None:
    env = json.loads(encode_envelope(msg("a"), Route("q"), 0, "x"))
    del env["properties"]["delivery_tag"]
    broker.client.lpush(f"{prefix}q", json.dumps(env))
    [d] = broker.fetch(["q"], 10, timeout=0)
    assert d.message.task_id == "a" and d.tag[1].startswith("celeriac-")
    broker.ack([d])
    assert broker.depth("q") == 0


def test_delivery_count_survives_restores(broker: RedisBroker) -> None:
    broker.publish(Publication(msg("a"), Route("q")))
    counts = [broker.fetch(["q"], 1, timeout=3)[0].delivery_count for _ in range(3)]
    assert counts == [1, 2, 3]


def test_a_delivery_abandoned_by_a_celery_worker_is_restored(prefix: str) -> None:
    url = redis_support.url_with_prefix(prefix)
    broker = create_broker(url, {"celery_visibility_timeout": 5})
    try:
        r = broker.client
        envelope = json.loads(encode_envelope(msg("orphan"), Route("q"), 0, "celery-tag"))
        # What kombu writes when a Celery worker takes a message, ten seconds ago.
        r.hset(f"{prefix}unacked", "celery-tag", json.dumps([envelope, "", "q"]))
        r.zadd(f"{prefix}unacked_index", {"celery-tag": time.time() - 10})
        [d] = broker.fetch(["q"], 10, timeout=0)
        assert d.message.task_id == "orphan"
        assert d.tag[1] == "celery-tag"
    finally:
        broker.close()


def test_fetch_wakes_at_once_when_a_message_is_published(prefix: str) -> None:
    import threading

    url = redis_support.url_with_prefix(prefix)
    producer, consumer = create_broker(url), create_broker(url, {"polling_interval": 5})
    try:
        consumer.fetch(["q"], 10, timeout=0)
        timer = threading.Timer(0.1, producer.publish, (Publication(msg("a"), Route("q")),))
        started = time.monotonic()
        timer.start()
        assert ids(consumer.fetch(["q"], 10, timeout=3)) == ["a"]
        assert time.monotonic() - started < 0.5  # woken by the publish, not the 5 s poll
    finally:
        producer.close()
        consumer.close()


def test_shared_rate_limit_slots_are_spaced(broker: RedisBroker) -> None:
    starts = [broker.reserve_rate_slot("k", 0.5) for _ in range(3)]
    assert starts[1] - starts[0] == pytest.approx(0.5, abs=0.01)
    assert starts[2] - starts[1] == pytest.approx(0.5, abs=0.01)


def test_unix_socket_and_sentinel_urls(tmp_path) -> None:
    server = redis_support.PrivateRedis(tmp_path)
    server.start()
    try:
        sentinel_port = server.start_sentinel("mymaster")
        urls = [
            (f"redis+socket://{server.socket_path}?virtual_host=3", {}),
            (f"sentinel://127.0.0.1:{sentinel_port}/3", {"master_name": "mymaster"}),
        ]
        for url, options in urls:
            broker = create_broker(url, options)
            try:
                broker.publish(Publication(msg(url), Route("q")))
                [d] = broker.fetch(["q"], 10, timeout=0)
                assert d.message.task_id == url
                broker.ack([d])
                assert broker.client.connection_pool.connection_kwargs["db"] == 3
            finally:
                broker.close()
    finally:
        server.stop()


def test_rediss_url_uses_tls_and_bad_urls_are_refused() -> None:
    import redis

    from celeriac.exceptions import ConfigurationError
    from celeriac.transports.redis.connection import connect

    client = connect("rediss://:secret@example.invalid:6380/2?ssl_cert_reqs=none").client
    pool = client.connection_pool
    assert issubclass(pool.connection_class, redis.SSLConnection)
    assert (pool.connection_kwargs["db"], pool.connection_kwargs["password"]) == (2, "secret")
    with pytest.raises(ConfigurationError, match="master_name"):
        connect("sentinel://127.0.0.1:26379/0")
    with pytest.raises(ConfigurationError, match="delayed_delivery"):
        create_broker(redis_support.base_url(), {"delayed_delivery": "worker"})


def test_a_second_copy_of_an_in_flight_message_is_dropped(broker: RedisBroker) -> None:
    # What a publish retried after a lost reply leaves: the same envelope twice.
    envelope = encode_envelope(msg("a"), Route("q"), 0, "same-tag")
    broker.client.lpush(f"{broker.prefix}q", envelope, envelope)
    [d] = broker.fetch(["q"], 10, timeout=0)
    assert broker.fetch(["q"], 10, timeout=0) == []
    broker.ack([d])
    assert broker.depth("q") == 0


def test_delays_are_measured_on_one_clock(broker: RedisBroker, monkeypatch) -> None:
    # A producer whose clock runs 100 s ahead asks for "in 0.3 s": the broker waits 0.3 s.
    import celeriac.transports.redis.broker as module

    real = time.time
    monkeypatch.setattr(module.time, "time", lambda: real() + 100)
    broker.publish(Publication(msg("skewed"), Route("q"), eta=module.time.time() + 0.3))
    monkeypatch.setattr(module.time, "time", real)
    started = time.monotonic()
    assert ids(broker.fetch(["q"], 10, timeout=3)) == ["skewed"]
    assert 0.25 <= time.monotonic() - started < 1.5


def test_fetch_reads_stored_states_when_the_results_share_its_database(prefix: str) -> None:
    url = redis_support.url_with_prefix(prefix)
    transport = open_transport(url)
    broker = transport.broker()
    backend = transport.backend(url)
    other = open_transport(redis_support.url_with_prefix(prefix, db=redis_support.DB + 1))
    other_db = other.backend(other.url)
    try:
        for task_id in ("first", "done", "gone", "new"):
            broker.publish(Publication(msg(task_id), Route("q")))
        for task_id, state in (("first", "SUCCESS"), ("done", "SUCCESS"), ("gone", "REVOKED")):
            backend.store_result(task_id, None, state)
        # another database: no script reads both, the worker looks up states itself (with
        # the results it stores, in one trip to that database)
        apart = transport.combine(broker, other_db)
        assert type(apart) is LookupCarriesResults
        [d] = apart.fetch(["q"], 1, timeout=0)
        assert (d.message.task_id, d.stored_state) == ("first", None)

        combined = transport.combine(broker, backend)
        states = {d.message.task_id: d.stored_state for d in combined.fetch(["q"], 10, timeout=0)}
        assert states == {"done": "SUCCESS", "gone": "REVOKED", "new": ""}
    finally:
        transport.close()
        other.close()


def test_the_combined_path_stores_results_before_it_acks_and_fetches(prefix: str) -> None:
    url = redis_support.url_with_prefix(prefix)
    transport = open_transport(url)
    broker = transport.broker()
    backend = transport.backend(url)
    assert isinstance(broker, RedisBroker) and isinstance(backend, RedisBackend)
    with pytest.raises(TypeError):  # not told where results go yet
        broker.store_ack_fetch([EncodedResult("x", "SUCCESS", b"{}")], [], ["q"], 1, timeout=0)
    listener = backend.client.pubsub()
    try:
        combined = transport.combine(broker, backend)
        assert combined.carries_results
        listener.subscribe(backend.key("a"))
        listener.get_message(timeout=1)  # the subscribe confirmation
        for task_id in ("a", "b", "c"):
            broker.publish(Publication(msg(task_id), Route("q")))
        first = combined.fetch(["q"], 2, timeout=0)
        backend.store_result("b", "earlier", "SUCCESS")

        def doc(task_id: str, value: str) -> EncodedResult:
            meta = {"task_id": task_id, "status": "SUCCESS", "result": value}
            return EncodedResult(task_id, "SUCCESS", json.dumps(meta).encode())

        results = [doc("a", "ran"), doc("b", "again")]
        [third] = combined.store_ack_fetch(results, first, ["q"], 2, timeout=1)
        assert third.message.task_id == "c"
        assert backend.get_meta("a")["result"] == "ran"
        assert backend.get_meta("b")["result"] == "earlier"  # a SUCCESS is never replaced
        published = listener.get_message(timeout=1)
        assert published is not None and json.loads(published["data"])["result"] == "ran"
        assert broker.depth("q") == 1  # a and b acked, c leased
        # No room to fetch: the results and acks still go.
        assert combined.store_ack_fetch([doc("c", "x")], [third], ["q"], 0, timeout=0) == []
        assert backend.get_meta("c")["result"] == "x"
        assert broker.depth("q") == 0
    finally:
        listener.close()
        transport.close()


def test_publish_many_is_one_script_call_even_after_redis_lost_the_script(tmp_path) -> None:
    import redis

    server = redis_support.PrivateRedis(tmp_path)  # a private one: SCRIPT FLUSH is ours alone
    server.start()
    broker = create_broker(server.url)
    watcher = redis.Redis.from_url(server.url)
    try:

        def calls(command: str) -> int:
            stats = watcher.info("commandstats").get(f"cmdstat_{command}", {})
            return int(stats.get("calls", 0))

        broker.publish_many([Publication(msg(f"a{i}"), Route("q")) for i in range(3)])
        watcher.script_flush()  # as after a restart of Redis
        broker.publish_many([Publication(msg(f"b{i}"), Route("q")) for i in range(3)])
        before = (calls("script|exists"), calls("evalsha"))
        broker.publish_many([Publication(msg(f"c{i}"), Route("q")) for i in range(3)])
        # one script call for the whole batch, and nothing asks whether it is loaded
        assert (calls("script|exists"), calls("evalsha")) == (before[0], before[1] + 1)
        got = broker.fetch(["q"], 20, timeout=0)
        assert sorted(ids(got)) == sorted(f"{p}{i}" for p in "abc" for i in range(3))
        broker.ack(got)
        # A batch over script_batch (250): one script call per 250, all in one round trip.
        before = calls("evalsha")
        broker.publish_many([Publication(msg(f"d{i}"), Route("q")) for i in range(600)])
        assert calls("evalsha") == before + 3
        assert ids(broker.fetch(["q"], 1000, timeout=0)) == [f"d{i}" for i in range(600)]
    finally:
        watcher.close()
        broker.close()
        server.stop()


@pytest.mark.parametrize("mode", ["queue", "broker"])
def test_a_countdown_goes_where_delayed_delivery_says(prefix: str, mode: str) -> None:
    # "queue" (the default): onto the list with the eta header a Celery worker reads, and our
    # fetch parks it in the sorted set; "broker": into the sorted set at once.
    options = {} if mode == "queue" else {"delayed_delivery": "broker"}
    broker = create_broker(redis_support.url_with_prefix(prefix), options)
    eta = time.time() + 60
    message = build_task_message(default_registry, task_name="t", task_id="cd", eta=eta)
    try:
        broker.publish(Publication(message, Route("q"), eta=eta))
        r = broker.client
        assert (r.llen(f"{prefix}q"), r.zcard(f"{prefix}celeriac.delayed.q")) == (
            (1, 0) if mode == "queue" else (0, 1)
        )
        assert broker.fetch(["q"], 10, timeout=0) == []
        assert (r.llen(f"{prefix}q"), r.zcard(f"{prefix}celeriac.delayed.q")) == (0, 1)
        assert r.hlen(f"{prefix}unacked") == 0
    finally:
        broker.close()
