"""The Redis result backend in Celery's key layout (PROTOCOL.md §4)."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator

import pytest

from celeriac.backends import ChordPart, EncodedResult, create_backend
from celeriac.transports.redis.backend import RedisBackend
from tests import redis_support

pytestmark = pytest.mark.redis


@pytest.fixture
def prefix() -> Iterator[str]:
    prefix = redis_support.new_prefix()
    yield prefix
    redis_support.drop(prefix)


@pytest.fixture
def backend(prefix: str) -> Iterator[RedisBackend]:
    backend = create_backend(redis_support.url_with_prefix(prefix), expires=100)
    assert isinstance(backend, RedisBackend)
    yield backend
    backend.close()


def test_result_key_ttl_and_publish_as_celery_does(backend: RedisBackend, prefix: str) -> None:
    r = backend.client
    listener = r.pubsub(ignore_subscribe_messages=True)
    listener.subscribe(f"{prefix}celery-task-meta-t1")
    listener.get_message(timeout=1)  # the subscription is in place
    backend.store_result("t1", 4, "SUCCESS")
    raw = r.get(f"{prefix}celery-task-meta-t1")
    doc = json.loads(raw)
    assert (doc["status"], doc["result"], doc["task_id"]) == ("SUCCESS", 4, "t1")
    assert 99 <= r.ttl(f"{prefix}celery-task-meta-t1") <= 100
    msg = listener.get_message(timeout=2)
    assert msg is not None and msg["data"] == raw
    listener.close()


def test_a_batch_is_one_call_and_success_stays(backend: RedisBackend) -> None:
    enc = backend.encode_meta
    backend.store_encoded(
        [
            EncodedResult("a", "SUCCESS", enc({"status": "SUCCESS", "result": 1, "task_id": "a"})),
            EncodedResult(
                "b", "STARTED", enc({"status": "STARTED", "result": None, "task_id": "b"})
            ),
        ]
    )
    backend.store_encoded(
        [EncodedResult("a", "FAILURE", enc({"status": "FAILURE", "task_id": "a"}))]
    )
    assert backend.get_states(["a", "b", "missing"]) == {"a": "SUCCESS", "b": "STARTED"}


def test_msgpack_success_is_sticky_too(prefix: str) -> None:
    pytest.importorskip("msgpack")
    backend = create_backend(
        redis_support.url_with_prefix(prefix), serializer="msgpack", accept=["msgpack"]
    )
    try:
        backend.store_result("t1", 4, "SUCCESS")
        backend.store_result("t1", ValueError("late"), "FAILURE")
        assert backend.get_meta("t1")["result"] == 4
    finally:
        backend.close()


def test_wait_catches_a_result_stored_before_the_subscription(backend: RedisBackend) -> None:
    backend.store_result("t1", 4, "SUCCESS")
    backend._wait_for_change("t1", None, 5)  # returns at once: the re-read finds it
    assert backend.wait_for("t1", timeout=1)["result"] == 4


def test_wait_for_many_threads(backend: RedisBackend) -> None:
    got: dict[str, object] = {}

    def wait(task_id: str) -> None:
        got[task_id] = backend.wait_for(task_id, timeout=5)["result"]

    threads = [threading.Thread(target=wait, args=(f"t{i}",)) for i in range(5)]
    for t in threads:
        t.start()
    for i in range(5):
        backend.store_result(f"t{i}", i, "SUCCESS")
    for t in threads:
        t.join(10)
    assert got == {f"t{i}": i for i in range(5)}


def part(backend: RedisBackend, gid: str, index: int, value: object, state: str = "SUCCESS"):
    task_id = f"{gid}-{index}"
    meta = backend.encode_meta({"status": state, "result": value, "task_id": task_id})
    return ChordPart(gid, index, task_id, state, meta)


def test_chord_counts_each_header_once_in_celerys_keys(backend: RedisBackend, prefix: str) -> None:
    backend.chord_start("g", 3)
    r = backend.client
    base = f"{prefix}celery-taskset-meta-g"
    assert r.get(base + ".s") == b"3"
    assert backend.chord_record([part(backend, "g", 2, 30), part(backend, "g", 0, 10)]) == []
    # A redelivered header task (same id and index) is not counted twice.
    assert backend.chord_record([part(backend, "g", 0, 99)]) == []
    assert r.zrange(base + ".j", 0, -1, withscores=True) == [
        (b'[1, "g-0", "SUCCESS", 10]', 0.0),
        (b'[1, "g-2", "SUCCESS", 30]', 2.0),
    ]
    assert r.smembers(base + ".d") == {b"g-0:0", b"g-2:2"}
    assert backend.chord_record([part(backend, "g", 1, 20)]) == ["g"]
    assert backend.chord_record([part(backend, "g", 0, 10)]) == []  # claimed: not by another
    # The part that completed it comes back (its worker died before the chord was done): it
    # claims again, and its claim stands.
    assert backend.chord_record([part(backend, "g", 1, 20)]) == ["g"]
    assert r.get(base + ".c") == b"celeriac:g-1"
    assert [(tid, state) for tid, state, *_ in backend.chord_results("g")] == [
        ("g-0", "SUCCESS"),
        ("g-1", "SUCCESS"),
        ("g-2", "SUCCESS"),
    ]
    assert [backend.decode_meta(m)["result"] for _, _, m, *_ in backend.chord_results("g")] == [
        10,
        20,
        30,
    ]
    backend.chord_done("g")
    assert r.get(base + ".c") == b"done"
    assert not r.exists(base + ".j", base + ".s", base + ".d")
    assert backend.chord_record([part(backend, "g", 1, 20)]) == []  # late duplicate: ignored
    assert not r.exists(base + ".j")


def test_chord_size_from_the_body_when_no_counter_was_made(backend: RedisBackend) -> None:
    p0 = part(backend, "h", 0, 1)
    error = {"exc_type": "ValueError", "exc_message": ["x"], "exc_module": "builtins"}
    p1 = part(backend, "h", 1, error, "FAILURE")
    sized = [ChordPart(p.group_id, p.index, p.task_id, p.state, p.meta, 2) for p in (p0, p1)]
    assert backend.chord_record(sized) == ["h"]
    states = [state for _, state, *_ in backend.chord_results("h")]
    assert states == ["SUCCESS", "FAILURE"]


def test_save_and_restore_group(backend: RedisBackend, prefix: str) -> None:
    tup = [["g1", None], [[["a", None], None], [["b", None], None]]]
    backend.save_group("g1", tup)
    raw = backend.client.get(f"{prefix}celery-taskset-meta-g1")
    assert json.loads(raw) == {"result": tup}
    assert backend.restore_group("g1") == tup
    backend.forget_group("g1")
    assert backend.restore_group("g1") is None


def test_key_prefix_from_result_backend_transport_options(prefix: str) -> None:
    from celeriac import Celeriac

    app = Celeriac(
        "opts",
        broker_url="memory://",
        result_backend=redis_support.base_url(),
        result_backend_transport_options={"global_keyprefix": prefix},
    )
    try:
        app.backend.store_result("tid", 7, "SUCCESS")
        keys = [k.decode() for k in app.backend.client.keys(f"{prefix}*")]  # type: ignore[attr-defined]
        assert keys == [f"{prefix}celery-task-meta-tid"]  # the prefix ends in ":"
    finally:
        app.close()


def test_waits_on_ready_results_leave_no_confirmations_piling_up(backend: RedisBackend) -> None:
    """Each wait subscribes as it starts; one that finds its result at once never reads the
    confirmation, and the next wait reads what came, so a long join leaves at most a few."""
    for i in range(40):
        backend.store_result(f"r{i}", i, "SUCCESS")
    assert [backend.wait_for(f"r{i}", timeout=5)["result"] for i in range(40)] == list(range(40))
    listener = backend._local.pubsub
    unread = 0
    while listener.get_message(timeout=0.2) is not None:
        unread += 1
    assert unread <= 4  # the last wait's unsubscribe and subscribe, and the one before's
