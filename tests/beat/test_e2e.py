"""Real beat processes: exactly one message per tick with three beats, a leader killed with
SIGKILL, dynamic entries through the CLI, and load-time errors naming the entry."""

from __future__ import annotations

import itertools
import json
import os
import signal
import time
from collections import Counter

import pytest

from tests.beat.conftest import BeatEnv, wait_for

pytestmark = pytest.mark.e2e

WINDOW = 20.0
KILL_AFTER = 5.0


def run_three_beats_and_kill_the_leader(env: BeatEnv) -> None:
    for _ in range(3):
        env.start_beat("every-second")
    wait_for(lambda: env.depth() > 0, 15, "the first beat message")
    start = time.monotonic()
    arrivals = [start]
    seen = env.depth()
    killed: int | None = None
    while time.monotonic() - start < WINDOW + 0.5:
        depth = env.depth()
        if depth != seen:
            arrivals += [time.monotonic()] * (depth - seen)
            seen = depth
        if killed is None and time.monotonic() - start >= KILL_AFTER:
            killed = env.leader_pid()
            assert killed is not None, env.logs()
            os.kill(killed, signal.SIGKILL)
        time.sleep(0.05)
    assert killed is not None
    new_leader = env.leader_pid()
    assert new_leader is not None and new_leader != killed, env.logs()

    sent = env.ticks()
    ticks = [t for _, t, _ in sent]
    doubled = [t for t, n in Counter(ticks).items() if n > 1]
    assert not doubled, f"ticks sent twice: {doubled}\n{env.logs()}"
    assert len({task_id for _, _, task_id in sent}) == len(sent)
    first = ticks[0]
    in_window = [t for t in ticks if first <= t < first + WINDOW]
    assert 19 <= len(in_window) <= 21, f"{len(in_window)} messages in {WINDOW}s\n{env.logs()}"
    steps = [round(b - a, 6) for a, b in itertools.pairwise(ticks)]
    assert set(steps) == {1.0}, f"a tick was lost: steps {steps}\n{env.logs()}"
    gaps = [b - a for a, b in itertools.pairwise(arrivals)]
    assert max(gaps) <= 3.0, f"takeover took too long: gaps {gaps}\n{env.logs()}"


def test_three_beats_on_sqlite_one_message_per_tick_leader_killed(sqlite_beats: BeatEnv) -> None:
    run_three_beats_and_kill_the_leader(sqlite_beats)


@pytest.mark.redis
def test_three_beats_on_redis_one_message_per_tick_leader_killed(redis_beats: BeatEnv) -> None:
    run_three_beats_and_kill_the_leader(redis_beats)


def test_dynamic_entry_added_through_the_cli_fires_then_pauses(sqlite_beats: BeatEnv) -> None:
    env = sqlite_beats
    for _ in range(2):
        env.start_beat("none")
    wait_for(env.leader_pid, 15, "a leader")
    added = env.cli("beat", "add", "dyn", "--task", "beat_app.tick", "--every", "0.5")
    assert added.returncode == 0, added.stderr
    t0 = time.monotonic()
    wait_for(lambda: env.depth() >= 2, 5, "the dynamic entry to fire")
    assert time.monotonic() - t0 < 5

    listed = env.cli("beat", "list", "--json")
    assert listed.returncode == 0, listed.stderr
    doc = json.loads(listed.stdout)
    (row,) = doc["entries"]
    assert (row["name"], row["source"], row["paused"]) == ("dyn", "dynamic", False)
    assert row["schedule"] == {"every": 0.5}
    assert doc["leader"]["holder"]

    paused = env.cli("beat", "pause", "dyn")
    assert paused.returncode == 0, paused.stderr
    time.sleep(0.5)  # a message in flight when the pause landed may still arrive
    before = env.depth()
    time.sleep(2.0)  # the entry would fire four times in this
    assert env.depth() == before, "a paused entry sent messages"

    resumed = env.cli("beat", "resume", "dyn")
    assert resumed.returncode == 0, resumed.stderr
    wait_for(lambda: env.depth() > before, 5, "the resumed entry to fire")

    table = env.cli("beat", "list")
    assert "dyn" in table.stdout and "every 0.5s" in table.stdout and "leader:" in table.stdout
    missing = env.cli("beat", "pause", "dnn")
    assert missing.returncode != 0 and "did you mean 'dyn'" in missing.stderr


@pytest.mark.parametrize(
    ("schedule", "message"),
    [
        ("bad-cron", "beat_schedule entry 'broken-cron': bad crontab minute='61'"),
        ("bad-cron-string", "beat_schedule entry 'broken-string': bad crontab '*/5 * *'"),
        ("unknown-task", "beat entry 'typo': no task named 'beat_app.tikc'; did you mean"),
    ],
)
def test_a_bad_schedule_stops_beat_with_an_error_naming_the_entry(
    sqlite_beats: BeatEnv, schedule: str, message: str
) -> None:
    result = sqlite_beats.cli("beat", schedule=schedule)
    assert result.returncode == 1
    assert message in result.stderr, result.stderr
    assert "Traceback" not in result.stderr


def test_cli_add_rejects_a_bad_cron_expression(sqlite_beats: BeatEnv) -> None:
    result = sqlite_beats.cli("beat", "add", "x", "-t", "beat_app.tick", "--cron", "99 * * * *")
    assert result.returncode == 1
    assert "beat entry 'x': bad crontab minute='99'" in result.stderr
