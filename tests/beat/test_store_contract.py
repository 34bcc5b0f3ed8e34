"""The beat store contract, run unchanged over every store."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from celeriac.beat.store import BeatStore, EntryState
from celeriac.transports import open_transport
from celeriac.transports.memory.beat_store import MemoryBeatStore


def _memory(tmp: Path) -> Iterator[BeatStore]:
    yield MemoryBeatStore()


def _sqlite(tmp: Path) -> Iterator[BeatStore]:
    store = open_transport(f"sqlite:///{tmp / 'broker.sqlite3'}").beat_store()
    yield store
    store.close()


def _redis(tmp: Path) -> Iterator[BeatStore]:
    from tests import redis_support

    prefix = redis_support.new_prefix()
    store = open_transport(redis_support.url_with_prefix(prefix)).beat_store()
    try:
        yield store
    finally:
        store.close()
        redis_support.drop(prefix)


def _postgres(tmp: Path) -> Iterator[BeatStore]:
    from tests import postgres_support

    schema = postgres_support.new_schema()
    store = open_transport(postgres_support.url_for(schema)).beat_store()
    try:
        yield store
    finally:
        store.close()
        postgres_support.drop(schema)


STORES: list[object] = [
    pytest.param(_memory, id="memory"),
    pytest.param(_sqlite, id="sqlite"),
    pytest.param(_redis, id="redis", marks=pytest.mark.redis),
    pytest.param(_postgres, id="postgres", marks=pytest.mark.postgres),
]


@pytest.fixture(params=STORES)
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[BeatStore]:
    factory: Callable[[Path], Iterator[BeatStore]] = request.param
    yield from factory(tmp_path)


def wait_for(check: Callable[[], object], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.02)


def test_lease_is_exclusive_until_released(store: BeatStore) -> None:
    assert store.leader() is None
    assert store.acquire("a", 10)
    assert not store.acquire("b", 10)
    assert store.acquire("a", 10), "acquire by the holder extends"
    lease = store.leader()
    assert lease is not None and lease.holder == "a"
    assert lease.expires_at > time.time() + 5
    assert not store.renew("b", 10)
    assert store.renew("a", 10)
    store.release("b")  # not b's: no effect
    assert store.leader() is not None
    store.release("a")
    assert store.leader() is None
    assert store.acquire("b", 10)


def test_lease_expires_and_can_be_taken_over(store: BeatStore) -> None:
    if isinstance(store, MemoryBeatStore):
        now = [1000.0]
        store.clock = lambda: now[0]
        assert store.acquire("a", 0.3)
        now[0] += 0.31
    else:
        assert store.acquire("a", 0.3)
    wait_for(lambda: store.leader() is None)
    assert not store.renew("a", 10), "an expired lease is not renewed"
    assert store.acquire("b", 10)
    assert store.leader() is not None and store.leader().holder == "b"  # type: ignore[union-attr]


def test_claim_is_a_fenced_compare_and_set(store: BeatStore) -> None:
    assert not store.claim_tick("a", "e", 1.5, None), "no lease: nothing recorded"
    assert store.states() == {}
    store.acquire("a", 10)
    assert not store.claim_tick("b", "e", 1.5, None), "not the holder"
    assert store.claim_tick("a", "e", 1.5, None)
    assert not store.claim_tick("a", "e", 1.5, None), "a tick is claimed once"
    assert not store.claim_tick("a", "e", 2.5, None), "previous must match"
    assert store.claim_tick("a", "e", 2.5, 1.5)
    assert store.states()["e"].last_tick == 2.5
    tick = 1700000000.123456789 + 1 / 3  # full float precision survives the round trip
    assert store.claim_tick("a", "e", tick, 2.5)
    assert store.claim_tick("a", "e", tick + 1, tick)
    assert store.states()["e"].last_tick == tick + 1


def test_an_unsent_tick_holds_the_entry_until_settled(store: BeatStore) -> None:
    store.acquire("a", 10)
    assert store.claim_tick("a", "e", 1.0, None)
    assert not store.states()["e"].unsent
    assert store.claim_tick("a", "e", 2.0, 1.0, unsent=True)
    assert store.states()["e"] == EntryState(2.0, False, unsent=True)
    assert not store.claim_tick("a", "e", 3.0, 2.0), "no claim past an unsent tick"
    assert not store.claim_tick("a", "e", 3.0, 2.0, unsent=True)
    store.settle_tick("e", 1.0)  # not the unsent tick: no effect
    store.settle_tick("other", 2.0)
    assert store.states()["e"].unsent
    store.settle_tick("e", 2.0)
    assert store.states()["e"] == EntryState(2.0, False, unsent=False)
    store.settle_tick("e", 2.0)  # twice is harmless
    assert store.claim_tick("a", "e", 3.0, 2.0)
    assert store.states()["e"].last_tick == 3.0


def test_last_sent_is_set_by_a_send_only(store: BeatStore) -> None:
    """The first-sight anchor and a skipped tick are claimed without a message: they move the
    last tick, never the last send; a settled unsent tick records when it was sent, and one
    given up records nothing."""
    store.acquire("a", 10)
    assert store.claim_tick("a", "e", 1.0, None)  # the anchor
    assert store.states()["e"] == EntryState(1.0, False, False, last_sent=None)
    assert store.claim_tick("a", "e", 2.0, 1.0, unsent=True)
    store.settle_tick("e", 2.0, sent_at=1700000000.25)  # with the broker
    assert store.states()["e"] == EntryState(2.0, False, False, last_sent=1700000000.25)
    assert store.claim_tick("a", "e", 3.0, 2.0)  # a skipped tick
    assert store.claim_tick("a", "e", 4.0, 3.0, unsent=True)
    store.settle_tick("e", 4.0)  # given up
    store.settle_tick("e", 4.0, sent_at=1700000009.0)  # settled already: no effect
    assert store.states()["e"] == EntryState(4.0, False, False, last_sent=1700000000.25)
    store.put_entry("e", {"task": "t", "schedule": 5.0}, replace=True)
    store.remove_entry("e")
    assert store.claim_tick("a", "e", 5.0, None)
    assert store.states()["e"].last_sent is None, "forgotten with the entry"


def test_an_unsent_claim_is_fenced_too(store: BeatStore) -> None:
    assert not store.claim_tick("a", "e", 1.0, None, unsent=True)
    store.acquire("a", 10)
    assert not store.claim_tick("b", "e", 1.0, None, unsent=True)
    assert store.states() == {}
    tick = 1700000000.123456789 + 1 / 3
    assert store.claim_tick("a", "e", tick, None, unsent=True)
    store.settle_tick("e", tick)  # the float read back is the one settled
    assert not store.states()["e"].unsent


def test_dynamic_entries_bump_the_version(store: BeatStore) -> None:
    v0 = store.version()
    spec = {"task": "t", "schedule": {"every": 1.0}, "args": [1], "kwargs": {}, "options": {}}
    assert store.put_entry("dyn", spec, replace=False)
    v1 = store.version()
    assert v1 != v0
    assert store.entries() == {"dyn": spec}
    assert not store.put_entry("dyn", {**spec, "args": [2]}, replace=False)
    assert store.entries()["dyn"]["args"] == [1]
    assert store.put_entry("dyn", {**spec, "args": [2]}, replace=True)
    assert store.entries()["dyn"]["args"] == [2]
    v2 = store.version()
    assert v2 != v1
    store.set_paused("dyn", True)
    assert store.states()["dyn"].paused
    assert store.version() != v2
    store.set_paused("dyn", False)
    # A name with neither a tick nor a pause may be left out.
    assert not store.states().get("dyn", EntryState(None, False)).paused
    store.set_paused("static", True)  # any name can be paused, stored or not
    assert store.states()["static"].paused


def test_remove_forgets_entry_tick_and_pause(store: BeatStore) -> None:
    store.acquire("a", 10)
    store.put_entry("dyn", {"task": "t", "schedule": {"every": 1.0}}, replace=False)
    store.claim_tick("a", "dyn", 5.0, None, unsent=True)
    store.set_paused("dyn", True)
    v = store.version()
    assert store.remove_entry("dyn")
    assert store.entries() == {}
    assert "dyn" not in store.states()
    assert store.version() != v
    assert not store.remove_entry("dyn")
    store.put_entry("dyn", {"task": "t", "schedule": {"every": 1.0}}, replace=False)
    assert store.claim_tick("a", "dyn", 1.0, None), "nothing unsent is left of the old one"
