"""A full disk under real worker processes: the SQLite file on a small tmpfs that fills up
(tests/disk_support.py); the ledger and the logs stay on the ordinary disk."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest

from celeriac.exceptions import BrokerError
from tests.disk_support import SmallDisk, small_disk  # noqa: F401 - a fixture

from .conftest import Env, wait_for

pytestmark = pytest.mark.e2e

LEASE = 2.0


@pytest.fixture
def full_disk_env(
    small_disk: SmallDisk,  # noqa: F811
    e2e: tuple[Env, object],
    monkeypatch: pytest.MonkeyPatch,
) -> Iterator[tuple[Env, object, SmallDisk]]:
    """The e2e environment with its broker file (and results) moved onto the small disk."""
    env, tasks = e2e
    env.url = f"sqlite:///{small_disk.path}/broker.sqlite3"
    env.env["CELERIAC_BROKER_URL"] = env.url
    env.set_vt(LEASE)
    monkeypatch.setenv("CELERIAC_BROKER_URL", env.url)
    app = tasks.app  # type: ignore[attr-defined]
    app.conf.update(broker_url=env.url)
    app.close()
    app.broker.depth("celery")  # tables made before the disk fills
    yield env, tasks, small_disk
    env.close()  # the workers end before the disk goes away


def test_a_full_disk_holds_the_queue_and_nothing_is_lost_or_run_twice(full_disk_env):
    env, tasks, disk = full_disk_env
    env.start_worker("-c", "2")
    results = [tasks.sleepy.delay(1.0) for _ in range(4)]
    wait_for(lambda: len(env.ledger_entries("start")) == 2, 20, "two tasks to start")
    disk.fill()
    with pytest.raises(BrokerError, match="no space left on the disk"):
        tasks.add.delay(1, 1)
    # The two running tasks end; their results cannot be stored, nor their leases renewed,
    # which run out (LEASE) while the disk stays full.
    wait_for(lambda: len(env.ledger_entries("end")) == 2, 20, "the running tasks to end")
    time.sleep(2 * LEASE)  # a lease's end is a time, not an event
    disk.free()

    assert [r.get(timeout=60) for r in results] == [1.0] * 4
    assert env.ledger_entries("start") == {r.id: 1 for r in results}
    assert env.ledger_entries("end") == {r.id: 1 for r in results}
    wait_for(lambda: tasks.app.broker.depth("celery") == 0, 20, "every message acknowledged")
    assert tasks.app.broker.dead_letters() == []


def test_warm_shutdown_on_a_full_disk_ends_and_leaves_the_messages_leased(full_disk_env):
    env, tasks, disk = full_disk_env
    worker = env.start_worker("-c", "1")
    result = tasks.sleepy.delay(1.0)
    wait_for(lambda: env.ledger_entries("start")[result.id] == 1, 20, "the task to start")
    disk.fill()
    wait_for(lambda: env.ledger_entries("end")[result.id] == 1, 20, "the task to end")
    asked = time.monotonic()
    assert env.stop_worker(worker, timeout=60) == 0
    took = time.monotonic() - asked
    log = env.log(worker)
    assert "left 1 message(s) leased" in log, log
    assert took < 20, f"warm shutdown took {took:.1f}s"

    disk.free()
    env.start_worker("-c", "1")
    # Its result was never stored: it comes back when its lease ends, and runs again.
    assert result.get(timeout=30) == 1.0
    assert env.ledger_entries("end")[result.id] == 2


def test_results_on_a_full_disk_are_never_acknowledged_away_at_shutdown(
    e2e,
    small_disk: SmallDisk,  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
):
    """The broker on the ordinary disk, the results on the one that fills: acknowledging a
    message whose result could not be stored would lose the result for good."""
    env, tasks = e2e
    env.set_vt(LEASE)
    results_url = f"sqlite:///{small_disk.path}/results.sqlite3"
    env.env["CELERIAC_RESULT_BACKEND"] = results_url
    monkeypatch.setenv("CELERIAC_RESULT_BACKEND", results_url)
    tasks.app.conf.update(result_backend=results_url)
    tasks.app.close()
    tasks.app.backend.get_states(["none"])  # tables made before the disk fills
    try:
        worker = env.start_worker("-c", "1")
        result = tasks.sleepy.delay(1.0)
        wait_for(lambda: env.ledger_entries("start")[result.id] == 1, 20, "the task to start")
        small_disk.fill()
        wait_for(lambda: env.ledger_entries("end")[result.id] == 1, 20, "the task to end")
        assert env.stop_worker(worker, timeout=60) == 0
        assert "left 1 message(s) leased" in env.log(worker), env.log(worker)
        assert tasks.app.broker.depth("celery") == 1  # not acknowledged: its result is not stored

        small_disk.free()
        env.start_worker("-c", "1")
        assert result.get(timeout=30) == 1.0
        assert env.ledger_entries("end")[result.id] == 2
    finally:
        env.close()  # the workers end before the disk goes away
