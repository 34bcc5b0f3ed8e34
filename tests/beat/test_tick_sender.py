"""Tick senders on real servers: where the broker and the beat store share one (SQLite file,
Redis database, PostgreSQL schema), a tick is claimed and its message stored in one atomic
step, or neither."""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from celeriac import Celeriac
from celeriac.beat.scheduler import tick_task_id
from celeriac.beat.store import EntryState, TickSender, tick_sender
from celeriac.exceptions import BrokerError
from celeriac.protocol.publication import Publication
from celeriac.routing import Broadcast, Exchange, Queue
from celeriac.transports.memory.beat_store import MemoryBeatStore
from celeriac.transports.redis.beat_store import RedisTickSender
from celeriac.transports.sqlite.beat_store import SQLiteTickSender


def _break_sqlite(app: Celeriac) -> None:
    """The file refuses every new message, as a full disk would."""
    path = app.broker.db.path  # type: ignore[attr-defined]
    app.broker.depth("celery")  # the broker's tables exist
    with sqlite3.connect(path) as conn:
        conn.execute(
            "CREATE TRIGGER full_disk BEFORE INSERT ON celeriac_messages"
            " BEGIN SELECT RAISE(ABORT, 'database or disk is full'); END"
        )


def _break_redis(app: Celeriac) -> None:
    """The queue's key holds a string: Redis refuses to push to it (WRONGTYPE)."""
    broker: Any = app.broker
    broker.client.set(f"{broker.prefix}celery", "not a list")


def _sqlite(tmp: Path) -> Iterator[tuple[Celeriac, type[TickSender], Callable[[Celeriac], None]]]:
    app = Celeriac("ticks", broker_url=f"sqlite:///{tmp / 'broker.sqlite3'}", result_backend=None)
    yield app, SQLiteTickSender, _break_sqlite
    app.close()


def _redis(tmp: Path) -> Iterator[tuple[Celeriac, type[TickSender], Callable[[Celeriac], None]]]:
    from tests import redis_support

    prefix = redis_support.new_prefix()
    app = Celeriac("ticks", broker_url=redis_support.url_with_prefix(prefix), result_backend=None)
    try:
        yield app, RedisTickSender, _break_redis
    finally:
        app.close()
        redis_support.drop(prefix)


def _break_postgres(app: Celeriac) -> None:
    """The messages table refuses every new row (a constraint no row meets)."""
    import psycopg

    db: Any = app.broker.db  # type: ignore[attr-defined]
    app.broker.depth("celery")  # the tables exist
    with psycopg.connect(db.conninfo, autocommit=True) as conn:
        conn.execute(
            f'ALTER TABLE "{db.schema}".messages ADD CONSTRAINT refuse CHECK (false) NOT VALID'
        )


def _postgres(tmp: Path) -> Iterator[tuple[Celeriac, type[TickSender], Callable[[Celeriac], None]]]:
    from celeriac.transports.postgres.beat_store import PostgresTickSender
    from tests import postgres_support

    schema = postgres_support.new_schema()
    app = Celeriac("ticks", broker_url=postgres_support.url_for(schema), result_backend=None)
    try:
        yield app, PostgresTickSender, _break_postgres
    finally:
        app.close()
        postgres_support.drop(schema)


@pytest.fixture(
    params=[
        pytest.param(_sqlite, id="sqlite"),
        pytest.param(_redis, id="redis", marks=pytest.mark.redis),
        pytest.param(_postgres, id="postgres", marks=pytest.mark.postgres),
    ]
)
def server(
    request: pytest.FixtureRequest, tmp_path: Path
) -> Iterator[tuple[Celeriac, type[TickSender], Callable[[Celeriac], None]]]:
    yield from request.param(tmp_path)


def message(app: Celeriac, entry: str, tick: float, **options: Any) -> Publication:
    return app.prepare_message(
        "ticks.ping",
        task_id=tick_task_id(entry, tick),
        headers={"beat_entry": entry, "beat_tick": tick},
        **options,
    )


def ticks_on(app: Celeriac, queue: str = "celery") -> list[float]:
    got = app.broker.fetch([queue], 100, timeout=0)
    return [d.message.headers["beat_tick"] for d in got]


def test_the_app_s_own_broker_and_store_claim_and_send_in_one_step(server: Any) -> None:
    app, atomic, _ = server
    assert type(tick_sender(app.broker, app.beat_store)) is atomic
    elsewhere = MemoryBeatStore()
    assert type(tick_sender(app.broker, elsewhere)) is TickSender, "three steps"


def test_a_tick_is_recorded_with_its_message_or_not_at_all(server: Any) -> None:
    app, _, _ = server
    store = app.beat_store
    sender = tick_sender(app.broker, store)
    assert not sender.claim_and_send("a", "e", 1.0, None, message(app, "e", 1.0)), "no lease"
    store.acquire("a", 10)
    before = time.time()
    assert sender.claim_and_send("a", "e", 1.0, None, message(app, "e", 1.0))
    state = store.states()["e"]
    assert state == EntryState(1.0, False, unsent=False, last_sent=state.last_sent)
    assert state.last_sent is not None and before <= state.last_sent <= time.time(), "sent now"
    refused = [("b", 1.0), ("a", None), ("a", 0.5)]  # not the holder; previous does not match
    for holder, previous in refused:
        assert not sender.claim_and_send(holder, "e", 2.0, previous, message(app, "e", 2.0))
    assert store.claim_tick("a", "f", 1.0, None, unsent=True)
    assert not sender.claim_and_send("a", "f", 2.0, 1.0, message(app, "f", 2.0)), "f is unsent"
    assert (store.states()["e"].last_tick, store.states()["e"].last_sent) == (1.0, state.last_sent)
    assert store.states()["f"].last_sent is None, "claimed unsent: not sent (yet)"
    assert ticks_on(app) == [1.0], "one message: the claimed tick's"


def test_a_message_the_broker_refuses_leaves_the_tick_unclaimed(server: Any) -> None:
    app, _, break_queue = server
    store = app.beat_store
    sender = tick_sender(app.broker, store)
    store.acquire("a", 10)
    assert sender.claim_and_send("a", "e", 1.0, None, message(app, "e", 1.0))
    first = store.states()["e"].last_sent
    app.broker.fetch(["celery"], 10, timeout=0)
    break_queue(app)
    with pytest.raises(BrokerError):
        sender.claim_and_send("a", "e", 2.0, 1.0, message(app, "e", 2.0))
    assert store.states()["e"] == EntryState(1.0, False, False, first), "not recorded"


def test_a_tick_routed_through_an_exchange_is_stored_with_it(server: Any) -> None:
    app, _, _ = server
    app.conf.task_queues = [Queue("reports", Exchange("jobs", type="direct"), routing_key="r")]
    app.close()  # the broker is made again with the new topology
    store = app.beat_store
    sender = tick_sender(app.broker, store)
    store.acquire("a", 10)
    routed = message(app, "e", 1.0, exchange="jobs", routing_key="r")
    assert sender.claim_and_send("a", "e", 1.0, None, routed)
    assert ticks_on(app, "reports") == [1.0]


@pytest.mark.redis
def test_a_broadcast_on_redis_takes_the_three_steps(tmp_path: Path) -> None:
    """PUB/SUB keeps nothing a script could store: claimed as unsent, then published."""
    (app, _, _) = next(gen := _redis(tmp_path))
    try:
        app.conf.task_queues = [Broadcast("everyone")]
        store = app.beat_store
        sender = tick_sender(app.broker, store)
        store.acquire("a", 10)
        with pytest.raises(BrokerError, match="no worker is subscribed"):
            sender.claim_and_send("a", "e", 1.0, None, message(app, "e", 1.0, queue="everyone"))
        assert store.states()["e"] == EntryState(1.0, False, unsent=True), "sent again later"
    finally:
        gen.close()
