"""A tick is neither lost nor doubled: real beat processes killed (SIGKILL) in the middle of
sending a tick, and a send that fails after its message was stored. The faults are injected
below Celeriac, where the message is written (``beat_faults.py``); the tests count the messages
each tick got: exactly one."""

from __future__ import annotations

import itertools
import os
import signal
from collections import Counter
from pathlib import Path

import pytest

from celeriac.beat.scheduler import tick_task_id
from tests.beat.conftest import BeatEnv, wait_for

pytestmark = pytest.mark.e2e

ENTRY = "every-second"


def fault_mark(path: Path) -> tuple[int, float] | None:
    """(pid, tick) the fault fired on, once the firing process wrote them."""
    try:
        text = path.read_text()
    except FileNotFoundError:
        return None
    if not text.endswith("\n"):
        return None
    pid, tick = text.split()
    return int(pid), float(tick)


def inject(env: BeatEnv, fault: str, *, generic: bool) -> Path:
    mark = env.tmp / "fault.mark"
    env.env.update(
        BEAT_TEST_FAULT=fault,
        BEAT_TEST_FAULT_MARK=str(mark),
        BEAT_TEST_GENERIC="1" if generic else "0",
    )
    return mark


def check_each_tick_sent_once(env: BeatEnv, hit: float) -> None:
    """The tick the fault hit, and every tick after it, went out exactly once."""
    sent = env.ticks()
    ticks = [t for _, t, _ in sent]
    assert ticks.count(hit) == 1, f"tick {hit} sent {ticks.count(hit)} times: {ticks}\n{env.logs()}"
    doubled = [t for t, n in Counter(ticks).items() if n > 1]
    assert not doubled, f"ticks sent twice: {doubled}\n{env.logs()}"
    assert ticks[0] == hit, f"the fault hit the first send, yet {ticks[0]} came first"
    steps = [round(b - a, 6) for a, b in itertools.pairwise(ticks)]
    assert set(steps) == {1.0}, f"a tick was lost: steps {steps}\n{env.logs()}"
    ids = {task_id for entry, tick, task_id in sent if (entry, tick) == (ENTRY, hit)}
    assert ids == {tick_task_id(ENTRY, hit)}


def run_kill_in_the_middle_of_a_send(env: BeatEnv, *, generic: bool) -> None:
    mark = inject(env, "stall-in-send", generic=generic)
    for _ in range(2):
        env.start_beat(ENTRY)
    got = wait_for(lambda: fault_mark(mark), 20, "the leader to stall inside its first send")
    assert isinstance(got, tuple)
    pid, hit = got
    os.kill(pid, signal.SIGKILL)
    # The other beat takes over (the lease runs out in 1.5 s) and carries on.
    wait_for(lambda: env.depth() >= 4, 20, f"the other beat to send\n{env.logs()}")
    env.stop_beats()
    check_each_tick_sent_once(env, hit)
    # Three steps leave the tick claimed as unsent, for the next leader to send; one atomic
    # step leaves nothing, and the next leader claims the tick as if it were new.
    resent = "again with the same task id" in env.logs()
    assert resent == generic, env.logs()


def run_send_fails_after_storing(env: BeatEnv) -> None:
    mark = inject(env, "raise-after-send", generic=False)
    env.start_beat(ENTRY)
    wait_for(lambda: env.depth() >= 4, 20, f"beat to send\n{env.logs()}")
    env.stop_beats()
    got = fault_mark(mark)
    assert got is not None, env.logs()
    check_each_tick_sent_once(env, got[1])
    assert "test fault" in env.logs(), "the send failed, and beat said so"


def test_sqlite_beat_killed_inside_the_send_transaction(sqlite_beats: BeatEnv) -> None:
    run_kill_in_the_middle_of_a_send(sqlite_beats, generic=False)


def test_sqlite_beat_killed_between_recording_and_publishing(sqlite_beats: BeatEnv) -> None:
    run_kill_in_the_middle_of_a_send(sqlite_beats, generic=True)


def test_sqlite_send_that_fails_after_commit_is_not_sent_again(sqlite_beats: BeatEnv) -> None:
    run_send_fails_after_storing(sqlite_beats)


@pytest.mark.redis
def test_redis_beat_killed_in_the_middle_of_a_send(redis_beats: BeatEnv) -> None:
    run_kill_in_the_middle_of_a_send(redis_beats, generic=False)


@pytest.mark.redis
def test_redis_beat_killed_between_recording_and_publishing(redis_beats: BeatEnv) -> None:
    run_kill_in_the_middle_of_a_send(redis_beats, generic=True)


@pytest.mark.redis
def test_redis_send_whose_reply_is_lost_is_not_sent_again(redis_beats: BeatEnv) -> None:
    run_send_fails_after_storing(redis_beats)
