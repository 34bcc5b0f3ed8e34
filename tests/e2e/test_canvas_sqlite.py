"""Issue #5's canvas guarantees against real worker processes on SQLite."""

from __future__ import annotations

import os
import signal
import time

import pytest

from celeriac import chain, chord, group

from .conftest import wait_for

pytestmark = pytest.mark.e2e


def test_chord_of_1000_runs_its_body_once_with_the_right_sum(e2e):
    env, tasks = e2e
    env.start_worker("-c", "2")
    env.start_worker("-c", "2")
    result = chord(tasks.add.s(i, i) for i in range(1000))(tasks.tsum.s())
    assert result.get(timeout=60) == sum(2 * i for i in range(1000))
    assert sum(env.ledger_entries("body").values()) == 1


def test_chord_survives_a_worker_killed_midway(e2e):
    env, tasks = e2e
    env.set_vt(2)
    victim = env.start_worker("-c", "2")
    env.start_worker("-c", "2")
    result = chord(tasks.slow_add.s(i, 1) for i in range(300))(tasks.tsum.s())
    wait_for(lambda: sum(env.ledger_entries("run").values()) > 60, 30, "headers to be running")
    os.kill(victim.pid, signal.SIGKILL)
    assert result.get(timeout=60) == sum(i + 1 for i in range(300))
    assert sum(env.ledger_entries("body").values()) == 1


def test_chord_whose_headers_retry_runs_its_body_once(e2e):
    env, tasks = e2e
    env.start_worker("-c", "4")
    result = chord(tasks.flaky_once.s(i) for i in range(20))(tasks.tsum.s())
    assert result.get(timeout=30) == sum(range(20))
    runs = env.ledger_entries("run")
    assert len(runs) == 20 and set(runs.values()) == {2}  # each header: fail once, then succeed
    assert sum(env.ledger_entries("body").values()) == 1


def test_chain_of_50_and_an_error_at_step_10(e2e):
    env, tasks = e2e
    env.start_worker("-c", "2")
    ok = chain(tasks.inc_or_fail.s(0, -1), *[tasks.inc_or_fail.s(-1) for _ in range(49)])
    assert ok.apply_async().get(timeout=30) == 50

    steps = [tasks.inc_or_fail.s(0, 10), *[tasks.inc_or_fail.s(10) for _ in range(49)]]
    failing = chain(*steps)
    failing.set(link_error=[dict(tasks.on_error.s())])
    result = failing.apply_async()
    with pytest.raises(ValueError, match="failed at step 10"):
        result.get(timeout=30)
    wait_for(lambda: env.ledger_entries("errback"), 10, "the errback")
    assert sum(env.ledger_entries("errback").values()) == 1


def test_nested_chain_and_group_in_a_chord(e2e):
    env, tasks = e2e
    env.start_worker("-c", "4")
    workflow = chord(
        [tasks.add.s(1, 2) | tasks.mul.s(10), group(tasks.add.s(3, 3), tasks.add.s(4, 4))],
        tasks.tsum.s(),
    )
    assert workflow.apply_async().get(timeout=30) == 30 + 6 + 8


@pytest.mark.parametrize("moment", ["before", "after"])
def test_a_chord_body_runs_once_when_its_sender_dies_around_sending_it(e2e, moment):
    """The child that completes a chord dies as it sends the body: before (the body must not
    be lost) or after (it must not run twice). Its header message comes back and finishes the
    chord: the completing part claims it again, and a body that already succeeded is not run
    again."""
    from celeriac import chord

    env, tasks = e2e
    env.env["E2E_DIE_PUBLISHING"] = moment
    worker = env.start_worker("-c", "1")
    result = chord([tasks.add.s(i, i) for i in range(3)], tasks.tsum.s()).apply_async()
    assert result.get(timeout=20) == 6
    time.sleep(1.0)  # a second body, if one were sent, would have run by now
    assert sum(env.ledger_entries("body").values()) == 1
    assert "exited with code -9" in env.log(worker) or "exited with code 9" in env.log(worker)
