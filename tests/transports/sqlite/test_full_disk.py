"""The SQLite broker on a real disk that fills up (a small tmpfs, see tests/disk_support.py)."""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Callable, Iterator

import pytest

from celeriac.brokers import create_broker
from celeriac.exceptions import BrokerError
from celeriac.protocol.message import Message, build_task_message
from celeriac.protocol.publication import Publication, Route
from celeriac.protocol.serializers import default_registry
from celeriac.transports.sqlite.broker import SQLiteBroker
from tests.disk_support import SmallDisk, small_disk  # noqa: F401 - a fixture

LEASE = 1.0
MakeBroker = Callable[[], SQLiteBroker]


def msg(task_id: str) -> Message:
    return build_task_message(default_registry, task_name="t", task_id=task_id, args=("x" * 200,))


def pubs(prefix: str, n: int) -> list[Publication]:
    return [Publication(msg(f"{prefix}{i}"), Route("q")) for i in range(n)]


@pytest.fixture
def make_broker(small_disk: SmallDisk) -> Iterator[MakeBroker]:  # noqa: F811
    """Brokers on one file of the small disk, each with its own connections (as processes)."""
    made: list[SQLiteBroker] = []

    def make() -> SQLiteBroker:
        b = create_broker(f"sqlite:///{small_disk.path}/b.db", {"visibility_timeout": LEASE})
        assert isinstance(b, SQLiteBroker)
        b.depth("q")  # connected, tables made, before any disk fills
        made.append(b)
        return b

    yield make
    for b in made:
        b.close()


def test_a_publish_on_a_full_disk_fails_naming_the_cause_and_writes_nothing(
    make_broker: MakeBroker,
    small_disk: SmallDisk,  # noqa: F811
) -> None:
    broker = make_broker()
    broker.publish_many(pubs("a", 10))
    small_disk.fill()
    with pytest.raises(BrokerError) as info:
        broker.publish_many(pubs("b", 100))
    assert str(info.value).startswith(
        f"publish to 'q' failed: SQLite {small_disk.path}/b.db: database or disk is full: "
        "no space left on the disk holding it"
    ), info.value
    small_disk.free()
    assert broker.depth("q") == 10


def test_the_wal_is_checkpointed_and_truncated_once_writes_succeed_again(
    make_broker: MakeBroker,
    small_disk: SmallDisk,  # noqa: F811
    caplog: pytest.LogCaptureFixture,
) -> None:
    broker = make_broker()
    broker.publish_many(pubs("a", 200))
    wal_before = small_disk.file_size("b.db-wal")
    assert wal_before > 100_000  # the messages are in the WAL, not yet in the database
    small_disk.fill()
    with pytest.raises(BrokerError):
        broker.publish_many(pubs("b", 100))
    small_disk.free()
    wal_full = small_disk.file_size("b.db-wal")  # failed writes may leave frames behind
    with caplog.at_level(logging.WARNING, "celeriac.transport.sqlite"):
        broker.publish(Publication(msg("c"), Route("q")))
    assert small_disk.file_size("b.db-wal") == 0
    assert small_disk.file_size("b.db") > wal_before // 2  # where the messages are now
    assert broker.depth("q") == 201
    [said] = [r.message for r in caplog.records if r.name == "celeriac.transport.sqlite"]
    found = re.fullmatch(
        rf"SQLite {small_disk.path}/b\.db: writes succeed again; the WAL \((\d+) bytes\) was "
        "copied into the database and truncated",
        said,
    )
    assert found, said
    assert int(found[1]) > wal_full  # with the publish that succeeded


def _let_leases_run_out(deliveries_leased_at: float) -> None:
    # A lease's end is a time, not an event: nothing to wait for but the clock.
    time.sleep(max(0.0, deliveries_leased_at + LEASE + 0.2 - time.time()))


def test_leases_that_ran_out_while_the_disk_was_full_stay_with_their_holders(
    make_broker: MakeBroker,
    small_disk: SmallDisk,  # noqa: F811
    caplog: pytest.LogCaptureFixture,
) -> None:
    holder, other = make_broker(), make_broker()
    holder.publish_many(pubs("a", 2))
    leased_at = time.time()
    held = holder.fetch(["q"], 10, timeout=0)
    assert len(held) == 2
    small_disk.fill()
    _let_leases_run_out(leased_at)
    with pytest.raises(BrokerError):
        holder.extend(held)  # the holder cannot renew: its leases run out
    with pytest.raises(BrokerError):
        other.fetch(["q"], 10, timeout=0)  # nor can anyone claim them yet
    small_disk.free()

    with caplog.at_level(logging.WARNING, "celeriac.broker.sqlite"):
        assert other.fetch(["q"], 10, timeout=0) == []  # not delivered a second time
    assert [r.message for r in caplog.records if r.name == "celeriac.broker.sqlite"] == [
        f"writes to {small_disk.path}/b.db succeed again; 2 lease(s) that ran out meanwhile "
        "were renewed for their holders"
    ]
    holder.extend(held)
    holder.ack(held)
    assert holder.depth("q") == 0


def test_a_holder_that_died_during_the_outage_loses_its_leases_one_lease_later(
    make_broker: MakeBroker,
    small_disk: SmallDisk,  # noqa: F811
) -> None:
    holder, other = make_broker(), make_broker()
    holder.publish(Publication(msg("a"), Route("q")))
    leased_at = time.time()
    assert len(holder.fetch(["q"], 10, timeout=0)) == 1
    small_disk.fill()
    _let_leases_run_out(leased_at)
    with pytest.raises(BrokerError):
        other.fetch(["q"], 10, timeout=0)
    small_disk.free()
    spared_at = time.time()
    assert other.fetch(["q"], 10, timeout=0) == []
    holder.close()  # dies without renewing
    [again] = other.fetch(["q"], 10, timeout=LEASE + 2)
    assert (again.message.task_id, again.delivery_count) == ("a", 2)
    assert LEASE - 0.1 <= time.time() - spared_at <= LEASE + 1
