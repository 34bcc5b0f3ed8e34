"""One contract for every result backend (see celeriac.backends.base)."""

from __future__ import annotations

import builtins
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from pathlib import Path

import pytest

from celeriac import exceptions
from celeriac.backends import ChordPart, EncodedResult, ResultBackend, create_backend
from tests import amqp_support, postgres_support, redis_support
from tests.amqp_support import amqp_vhost  # noqa: F401 - a fixture

MakeBackend = Callable[..., ResultBackend]


@pytest.fixture(
    params=[
        "memory",
        "sqlite",
        pytest.param("redis", marks=pytest.mark.redis),
        pytest.param("rpc", marks=pytest.mark.amqp),
        pytest.param("postgres", marks=pytest.mark.postgres),
        pytest.param("memcached", marks=pytest.mark.memcached),
    ]
)
def make_backend(request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    made: list[ResultBackend] = []
    url = "memory://" if request.param == "memory" else f"sqlite:///{tmp_path}/r.db"
    options = None
    if request.param == "rpc":
        if "expire" in request.node.name or "expiry" in request.node.name:
            pytest.skip("rpc:// results are messages read once, kept by the client: no expiry")
        url = "rpc" + amqp_support.url_for(request.getfixturevalue("amqp_vhost"))[4:]
    if request.param == "redis":
        url = redis_support.url_with_prefix(prefix := redis_support.new_prefix())
        request.addfinalizer(lambda: redis_support.drop(prefix))
    if request.param == "postgres":
        url = postgres_support.postgres_url(request)
    if request.param == "memcached":
        url = request.getfixturevalue("memcached_server").url
        options = {"key_prefix": f"{uuid.uuid4().hex}:"}  # the server is shared by the session

    def make(expires: float | None = 86400.0) -> ResultBackend:
        backend = create_backend(url, expires=expires, transport_options=options)
        made.append(backend)
        if request.param == "rpc":
            # As if this process had sent every task: results come back to its reply queue.
            own = backend.reply_to()
            store = backend._store

            def routed(items: Sequence[EncodedResult]) -> None:
                store([EncodedResult(*item[:3], own, item[0]) for item in items])

            monkeypatch.setattr(backend, "_store", routed)
        return backend

    yield make
    for backend in made:
        backend.close()


@pytest.fixture
def backend(make_backend: MakeBackend) -> ResultBackend:
    return make_backend()


def wait_until(condition: Callable[[], bool], timeout: float = 3.0) -> bool:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True


def test_store_and_get_meta(backend: ResultBackend) -> None:
    backend.store_result("t1", {"sum": 4}, "SUCCESS", children=[[["c1", None], None]])
    meta = backend.get_meta("t1")
    assert (meta["status"], meta["result"], meta["task_id"]) == ("SUCCESS", {"sum": 4}, "t1")
    assert meta["children"] == [[["c1", None], None]]
    assert meta["date_done"] is not None


def test_failure_is_stored_as_an_exception_dict(backend: ResultBackend) -> None:
    backend.store_result("t1", ValueError("bad input", 42), "FAILURE", traceback="Traceback")
    meta = backend.get_meta("t1")
    assert meta["result"] == {
        "exc_type": "ValueError",
        "exc_message": ["bad input", 42],
        "exc_module": "builtins",
    }
    assert meta["traceback"] == "Traceback"


def test_unknown_id_is_pending(backend: ResultBackend) -> None:
    assert backend.get_meta("nobody") == {
        "status": "PENDING",
        "result": None,
        "traceback": None,
        "children": [],
        "date_done": None,
        "task_id": "nobody",
    }


def test_later_states_replace_earlier_ones(backend: ResultBackend) -> None:
    backend.store_result("t1", {"pid": 1}, "STARTED")
    backend.store_result("t1", ValueError("x"), "RETRY")
    assert backend.get_meta("t1")["status"] == "RETRY"
    backend.store_result("t1", 4, "SUCCESS")
    assert backend.get_meta("t1")["status"] == "SUCCESS"


def test_success_is_never_overwritten(backend: ResultBackend) -> None:
    backend.store_result("t1", 4, "SUCCESS")
    backend.store_result("t1", ValueError("duplicate run"), "FAILURE")
    later = backend.encode_meta({"status": "STARTED", "result": None, "task_id": "t1"})
    backend.store_encoded([EncodedResult("t1", "STARTED", later)])
    meta = backend.get_meta("t1")
    assert (meta["status"], meta["result"]) == ("SUCCESS", 4)


def test_forget(backend: ResultBackend) -> None:
    backend.store_result("t1", 4, "SUCCESS")
    backend.store_result("t2", 5, "SUCCESS")
    backend.forget("t1")
    assert backend.get_meta("t1")["status"] == "PENDING"
    assert backend.get_meta("t2")["status"] == "SUCCESS"


def test_wait_for_returns_when_another_thread_stores(backend: ResultBackend) -> None:
    backend.store_result("t1", None, "STARTED")  # not ready yet: wait_for keeps waiting
    timer = threading.Timer(0.05, backend.store_result, ("t1", 4, "SUCCESS"))
    timer.start()
    try:
        started = time.monotonic()
        meta = backend.wait_for("t1", timeout=5)
    finally:
        timer.cancel()
    assert (meta["status"], meta["result"]) == ("SUCCESS", 4)
    assert time.monotonic() - started < 2


def test_wait_for_times_out(backend: ResultBackend) -> None:
    started = time.monotonic()
    with pytest.raises(builtins.TimeoutError) as info:
        backend.wait_for("never", timeout=0.1)
    assert isinstance(info.value, exceptions.TimeoutError)
    assert isinstance(info.value, exceptions.CeleriacError)
    assert 0.1 <= time.monotonic() - started <= 0.1 + 0.5  # README: within T + 0.5 s


def test_results_expire(make_backend: MakeBackend) -> None:
    backend = make_backend(expires=0.2)
    backend.store_result("t1", 4, "SUCCESS")
    assert backend.get_meta("t1")["status"] == "SUCCESS"
    assert wait_until(lambda: backend.get_meta("t1")["status"] == "PENDING")


def test_an_expired_success_does_not_block_a_new_result(make_backend: MakeBackend) -> None:
    # Celery's key is gone once it expires; a task id reused later (e.g. a fixed id used for
    # de-duplication) must get its new result stored.
    backend = make_backend(expires=0.2)
    backend.store_result("t1", 4, "SUCCESS")
    assert wait_until(lambda: backend.get_meta("t1")["status"] == "PENDING")
    backend.store_result("t1", 5, "SUCCESS")
    assert backend.get_meta("t1")["result"] == 5


def test_no_expiry(make_backend: MakeBackend) -> None:
    backend = make_backend(expires=None)
    backend.store_result("t1", 4, "SUCCESS")
    assert backend.get_meta("t1")["result"] == 4


def test_a_chord_is_claimed_by_the_part_that_completes_it_and_by_it_again(
    backend: ResultBackend, request: pytest.FixtureRequest
) -> None:
    if "rpc" in request.node.name:
        pytest.skip("rpc:// cannot run chords, as in Celery")

    def part(index: int) -> ChordPart:
        meta = backend.encode_meta({"status": "SUCCESS", "result": index})
        return ChordPart("cg", index, f"cg-{index}", "SUCCESS", meta)

    backend.chord_start("cg", 2)
    assert backend.chord_record([part(0)]) == []
    assert backend.chord_record([part(1)]) == ["cg"]  # it completed the chord
    assert backend.chord_record([part(0)]) == []  # another part: the claim stands
    assert backend.chord_record([part(1)]) == ["cg"]  # redelivered, the claimer claims again
    backend.chord_done("cg")
    assert backend.chord_record([part(1)]) == []  # done: late duplicates are ignored
