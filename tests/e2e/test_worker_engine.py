"""Issue #3's guarantees, against real worker processes on SQLite."""

from __future__ import annotations

import itertools
import time

import pytest

from celeriac import SoftTimeLimitExceeded, TimeLimitExceeded, states
from celeriac.exceptions import TaskRevokedError

from .conftest import ledger_records, wait_for

pytestmark = pytest.mark.e2e


def _times(env, kind: str, task_id: str) -> list[float]:
    out = []
    for _, (k, tid, ts) in ledger_records(env.ledger):
        if k == kind and tid == task_id:
            out.append(float(ts))
    return sorted(out)


def test_asyncio_pool_runs_200_coroutines_at_once_and_sync_tasks_do_not_stall_it(e2e):
    env, tasks = e2e
    env.start_worker("-P", "asyncio", "-c", "200")
    blocker = tasks.sleepy.delay(2.5)  # a blocking sync task on the same worker
    started = time.monotonic()
    results = [tasks.asleep.delay(1) for _ in range(200)]
    assert [r.get(timeout=10) for r in results] == [1] * 200
    assert time.monotonic() - started < 3.0
    assert blocker.get(timeout=10) == 2.5


def test_prefork_worker_runs_async_def_tasks_too(e2e):
    env, tasks = e2e
    env.start_worker("-c", "2")
    assert tasks.asleep.delay(0.1).get(timeout=10) == 0.1


def test_a_long_task_does_not_hold_back_the_result_of_a_short_one_fetched_with_it(e2e):
    env, tasks = e2e
    short, long = tasks.add.delay(1, 2), tasks.sleepy.delay(3)
    env.start_worker("-c", "1")  # one child: it leases both in one batch, short first
    assert short.get(timeout=10) == 3
    assert long.state != states.SUCCESS, "the short result waited for the long task"
    assert long.get(timeout=10) == 3


def test_hard_time_limit_kills_the_child_and_the_worker_goes_on(e2e):
    env, tasks = e2e
    env.start_worker("-c", "1")
    result = tasks.forever.delay()
    with pytest.raises(TimeLimitExceeded):
        result.get(timeout=10)
    assert result.state == states.FAILURE
    assert tasks.add.delay(1, 2).get(timeout=10) == 3  # a fresh child serves the next task
    time.sleep(1.0)
    assert env.ledger_entries("start")[result.id] == 1, "the killed task was delivered again"
    assert tasks.app.broker.depth("celery") == 0


def test_soft_time_limit_is_raised_inside_the_task_which_can_clean_up(e2e):
    env, tasks = e2e
    env.start_worker("-c", "1")
    assert tasks.soft.delay().get(timeout=10) == "cleaned up"


def test_soft_time_limit_on_the_asyncio_pool_cancels_the_coroutine(e2e):
    env, tasks = e2e
    env.start_worker("-P", "asyncio", "-c", "4")
    result = tasks.asleep.apply_async((5,), soft_time_limit=0.5)
    with pytest.raises(SoftTimeLimitExceeded):
        result.get(timeout=10)


def test_autoretry_with_backoff_runs_exactly_four_times_then_fails(e2e):
    env, tasks = e2e
    env.start_worker("-c", "2")
    failing = tasks.flaky_io.delay(10)
    with pytest.raises(OSError, match="attempt 4 failed"):
        failing.get(timeout=20)
    runs = _times(env, "run", failing.id)
    assert len(runs) == 4
    gaps = [b - a for a, b in itertools.pairwise(runs)]
    assert gaps[0] >= 0.2 and gaps[1] > gaps[0] and gaps[2] > gaps[1], gaps

    recovers = tasks.flaky_io.delay(2)
    assert recovers.get(timeout=20) == 2  # succeeded on the 3rd try, with retries == 2
    assert recovers.state == states.SUCCESS
    assert len(_times(env, "run", recovers.id)) == 3


def test_global_rate_limit_is_shared_by_two_workers(e2e):
    env, tasks = e2e
    env.start_worker("-c", "4")
    env.start_worker("-c", "4")
    started = time.monotonic()
    results = [tasks.limited.delay(i) for i in range(200)]
    assert [r.get(timeout=30) for r in results] == list(range(200))
    took = time.monotonic() - started
    assert 9.5 <= took <= 12.0, took
    by_process = {p.name for p in env.ledger.glob("*.log")}
    assert len(by_process) >= 2, "only one worker process ran tasks"


def test_per_worker_rate_limit_is_split_between_prefork_children(e2e):
    env, tasks = e2e
    env.start_worker("-c", "2")
    tasks.add.delay(0, 0).get(timeout=10)  # both children up
    started = time.monotonic()
    results = [tasks.throttled.delay(i) for i in range(30)]
    assert [r.get(timeout=20) for r in results] == list(range(30))
    took = time.monotonic() - started
    assert 2.4 <= took <= 4.5, took  # 10/s for the worker, not 10/s per child


def test_revoked_before_start_never_runs_on_any_worker(e2e):
    env, tasks = e2e
    result = tasks.add.apply_async((1, 1), countdown=0.5)
    result.revoke()
    env.start_worker("-c", "1")
    late = tasks.add.delay(2, 2)
    assert late.get(timeout=10) == 4
    time.sleep(1.0)  # the countdown has passed: the revoked one came due and was skipped
    assert result.state == states.REVOKED
    assert env.ledger_entries("run")[result.id] == 0
    assert tasks.app.broker.depth("celery") == 0


def test_revoke_with_terminate_stops_a_running_task_within_a_second(e2e):
    env, tasks = e2e
    env.start_worker("-c", "1")
    result = tasks.sleepy.delay(30)
    wait_for(lambda: env.ledger_entries("start")[result.id], 10, "the task to start")
    revoked_at = time.monotonic()
    result.revoke(terminate=True)
    wait_for(lambda: tasks.app.broker.depth("celery") == 0, 5, "the message to be acked")
    assert time.monotonic() - revoked_at < 1.0
    assert result.state == states.REVOKED
    with pytest.raises(TaskRevokedError):
        result.get(timeout=1)
    assert env.ledger_entries("end")[result.id] == 0
    assert tasks.add.delay(3, 4).get(timeout=10) == 7


def test_max_tasks_per_child_replaces_children_and_loses_nothing(e2e):
    env, tasks = e2e
    env.start_worker("-c", "1", "--max-tasks-per-child", "10")
    pids = [tasks.pid.delay().get(timeout=10) for _ in range(50)]
    assert len(pids) == 50
    assert len(set(pids)) == 5


def test_max_memory_per_child_replaces_a_child_over_the_limit(e2e):
    env, tasks = e2e
    env.start_worker("-c", "1", "--max-memory-per-child", "1")  # 1 KiB: always over
    pids = [tasks.pid.delay().get(timeout=10) for _ in range(4)]
    assert len(set(pids)) == 4
    assert "over max_memory_per_child" in env.log(env.workers[0])


def test_a_prefork_child_that_dies_is_replaced_and_its_task_runs_again(e2e):
    env, tasks = e2e
    env.set_vt(60)  # given back by the supervisor at once, not when the lease runs out
    worker = env.start_worker("-c", "1")
    result = tasks.crash_once.delay()
    assert tasks.add.delay(2, 3).get(timeout=10) == 5  # a fresh child serves meanwhile
    assert result.get(timeout=10) == "survived"
    assert env.ledger_entries("start")[result.id] == 2
    log = env.log(worker)
    assert "exited with code 3" in log
    assert "was running in a child that died (exit code 3); requeued, delivery 1" in log


@pytest.mark.parametrize("broker", ["sqlite", pytest.param("redis", marks=pytest.mark.redis)])
def test_a_task_holding_the_gil_past_its_lease_is_not_run_twice(e2e, broker):
    """The child cannot renew its own lease while the task holds the GIL; its supervisor
    does, from another process, so no other child or worker takes the message meanwhile."""
    env, tasks = e2e
    if broker == "redis":
        from tests import redis_support

        prefix = redis_support.new_prefix()
        url = redis_support.url_with_prefix(prefix)
        env.url = env.env["CELERIAC_BROKER_URL"] = url
        env.env["CELERIAC_RESULT_BACKEND"] = url
        tasks.app.conf.update(broker_url=url, result_backend=url)
        tasks.app.close()
    env.set_vt(1)
    try:
        env.start_worker("-c", "2")
        env.start_worker("-c", "1")
        held = tasks.gil_sleep.delay(4)
        assert held.get(timeout=20) == 4
        assert env.ledger_entries("start")[held.id] == 1
        assert env.ledger_entries("end")[held.id] == 1
    finally:
        if broker == "redis":
            env.close()
            redis_support.drop(prefix)


def test_a_task_outgrowing_max_memory_per_child_is_stopped_and_fails(e2e):
    env, tasks = e2e
    worker = env.start_worker("-c", "1", "--max-memory-per-child", str(150 * 1024))
    # It can act on the signal: MemoryLimitExceeded is raised in the task.
    told = tasks.hog_memory.delay(300, 20)
    with pytest.raises(Exception) as err:
        told.get(timeout=15)
    assert type(err.value).__name__ == "MemoryLimitExceeded"
    # It will not: the supervisor kills the child and fails the task.
    killed = tasks.hog_memory.delay(300, 20, stubborn=True)
    with pytest.raises(Exception) as err:
        killed.get(timeout=15)
    assert type(err.value).__name__ == "MemoryLimitExceeded"
    assert tasks.add.delay(1, 2).get(timeout=10) == 3  # the worker goes on
    starts = env.ledger_entries("start")
    assert (starts[told.id], starts[killed.id]) == (1, 1)  # failed, not run again
    assert "did not stop its task; killing it" in env.log(worker)


def test_a_child_stuck_past_its_hard_limit_with_the_gil_held_is_killed_by_the_parent(e2e):
    env, tasks = e2e
    env.set_vt(60)
    worker = env.start_worker("-c", "1")
    stuck = tasks.gil_hog.delay()
    wait_for(lambda: env.ledger_entries("start")[stuck.id], 10, "the task to start")
    # The child's own watchdog cannot run without the GIL: the parent kills it instead, and
    # fails the task as the child would have (not run again, not left to its lease).
    wait_for(lambda: "past its hard time limit" in env.log(worker), 10, "the parent's kill")
    with pytest.raises(Exception) as err:
        stuck.get(timeout=10)
    assert type(err.value).__name__ == "TimeLimitExceeded"
    assert tasks.add.delay(1, 2).get(timeout=10) == 3
    assert env.ledger_entries("start")[stuck.id] == 1


def test_children_that_crash_as_they_start_are_restarted_with_a_back_off(e2e):
    env, _ = e2e
    env.env["E2E_CHILD_CRASH"] = "1"
    worker = env.start_worker("-c", "1")
    wait_for(lambda: env.log(worker).count("exited with code 5") >= 3, 10, "three crashes")
    log = env.log(worker)
    assert "starting another in " in log, log  # young crashes back off
    crashes = log.count("exited with code 5")
    time.sleep(1.0)
    assert env.log(worker).count("exited with code 5") <= crashes + 3, "no back-off"
    assert env.stop_worker(worker, timeout=10) == 0  # a warm stop during the back-off


def test_revoke_with_terminate_of_a_task_that_just_finished_changes_nothing(e2e):
    # The child's lease slot must stop naming a task as running once it has ended: a terminate
    # landing just after (while the idle child waits up to half a second in its next fetch)
    # would kill that child and store REVOKED over the task's SUCCESS.
    env, tasks = e2e
    env.start_worker("-c", "1")
    first = tasks.pid.delay()
    child = first.get(timeout=10)
    first.revoke(terminate=True)
    time.sleep(1.0)
    assert first.state == states.SUCCESS
    assert first.get(timeout=1) == child
    assert tasks.pid.delay().get(timeout=10) == child  # the same child: nothing was killed
