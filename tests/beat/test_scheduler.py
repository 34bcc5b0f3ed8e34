"""Scheduler logic on the in-memory broker and store, with a hand-moved clock."""

from __future__ import annotations

import datetime as dt
import logging
import time
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from celeriac import Celeriac
from celeriac.beat import api
from celeriac.beat.entries import Entry, Step, next_step, parse_entry
from celeriac.beat.scheduler import Beat, start_embedded_beat, tick_task_id
from celeriac.beat.schedules import clocked, crontab, schedule
from celeriac.exceptions import ConfigurationError
from celeriac.transports.memory.beat_store import MemoryBeatStore

UTC = dt.timezone.utc
T0 = 1_700_000_000.0


class Clock:
    def __init__(self, now: float = T0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def make_app(**entries: dict[str, Any]) -> Celeriac:
    app = Celeriac("proj", broker_url="memory://", result_backend=None)

    @app.task(name="proj.ping")
    def ping(n: int = 0) -> int:
        return n

    app.conf.beat_schedule = dict(entries)
    return app


def sent(app: Celeriac) -> list[tuple[str, float]]:
    """(entry, tick) of every message on the default queue, in order."""
    deliveries = app.broker.fetch(["celery"], 10_000, timeout=0)
    return [(d.message.headers["beat_entry"], d.message.headers["beat_tick"]) for d in deliveries]


def beats(app: Celeriac, clock: Clock, *names: str, **kw: Any) -> list[Beat]:
    store = MemoryBeatStore(clock=clock)
    return [Beat(app, store=store, clock=clock, holder=n, **kw) for n in names]


def step(clock: Clock, seconds: float, *running: Beat) -> None:
    clock.now += seconds
    for beat in running:
        beat.run_once()


# -- the timing policy -------------------------------------------------------------------------
def entry(sched: Any, catchup: bool | None = None) -> Entry:
    raw: dict[str, Any] = {"task": "proj.ping", "schedule": sched}
    if catchup is not None:
        raw["catchup"] = catchup
    return parse_entry("e", raw)


def test_first_sight_records_an_anchor_without_sending() -> None:
    assert next_step(entry(10), None, 100.0, 4.0, UTC) == Step(100.0, send=False)
    assert next_step(entry(10), 100.0, 105.0, 4.0, UTC) is None
    assert next_step(entry(10), 100.0, 110.0, 4.0, UTC) == Step(110.0, send=True)


def test_late_ticks_within_grace_are_sent_one_by_one() -> None:
    e = entry(1)
    assert next_step(e, 100.0, 103.5, 4.0, UTC) == Step(101.0, send=True)
    assert next_step(e, 101.0, 103.5, 4.0, UTC) == Step(102.0, send=True)
    assert next_step(e, 103.0, 103.5, 4.0, UTC) is None


def test_missed_ticks_collapse_into_one_step() -> None:
    # Down from 100 to 3600: the ticks up to 3596 are missed, the rest are merely late.
    assert next_step(entry(1), 100.0, 3600.0, 4.0, UTC) == Step(3596.0, send=False, missed=True)
    assert next_step(entry(1, catchup=True), 100.0, 3600.0, 4.0, UTC) == Step(
        3596.0, send=True, missed=True
    )
    assert next_step(entry(1), 3596.0, 3600.0, 4.0, UTC) == Step(3597.0, send=True)


def test_a_one_off_first_seen_late_still_runs_once() -> None:
    at = dt.datetime(2030, 1, 1, tzinfo=UTC)
    e = entry(clocked(at))
    now = at.timestamp() + 3600
    first = next_step(e, None, now, 4.0, UTC)
    assert first == Step(0.0, send=False)
    assert next_step(e, 0.0, now, 4.0, UTC) == Step(at.timestamp(), send=True, missed=True)
    assert next_step(e, at.timestamp(), now, 4.0, UTC) is None


# -- one beat ----------------------------------------------------------------------------------
def test_interval_entry_sends_each_tick_once_with_stable_ids() -> None:
    app = make_app(ping={"task": "proj.ping", "schedule": 1.0, "args": (7,)})
    clock = Clock()
    (beat,) = beats(app, clock, "a")
    beat.run_once()  # leads, anchors at T0
    for _ in range(10):
        step(clock, 1.0, beat)
    got = app.broker.fetch(["celery"], 100, timeout=0)
    assert [d.message.headers["beat_tick"] for d in got] == [T0 + i for i in range(1, 11)]
    assert [d.message.task_id for d in got] == [tick_task_id("ping", T0 + i) for i in range(1, 11)]
    assert all(d.message.headers["task"] == "proj.ping" for d in got)


def test_run_once_sleeps_until_the_next_tick() -> None:
    app = make_app(slow={"task": "proj.ping", "schedule": 60.0})
    clock = Clock()
    (beat,) = beats(app, clock, "a")
    beat.run_once()
    # Leader: wakes for its renewal or the poll, never later than the next tick.
    assert 0 < beat.run_once() <= beat.poll_interval


def test_crontab_entry_runs_once_on_the_fall_back_day() -> None:
    app = make_app(night={"task": "proj.ping", "schedule": crontab(minute=30, hour=1)})
    app.conf.timezone = "Europe/London"
    tz = ZoneInfo("Europe/London")
    clock = Clock(dt.datetime(2024, 10, 26, 12, tzinfo=tz).timestamp())
    (beat,) = beats(app, clock, "a")
    beat.run_once()
    end = dt.datetime(2024, 10, 28, 12, tzinfo=tz).timestamp()
    while clock.now < end:
        step(clock, 300.0, beat)
    ticks = [dt.datetime.fromtimestamp(t, tz).strftime("%m-%d %H:%M%z") for _, t in sent(app)]
    assert ticks == ["10-27 01:30+0100", "10-28 01:30+0000"]


def test_a_clocked_entry_fires_once() -> None:
    clock = Clock()
    at = dt.datetime.fromtimestamp(T0 + 5, UTC)
    app = make_app(once={"task": "proj.ping", "schedule": clocked(at)})
    (beat,) = beats(app, clock, "a")
    for _ in range(20):
        step(clock, 1.0, beat)
    assert sent(app) == [("once", T0 + 5)]


class Killed(BaseException):
    """Stands for SIGKILL: nothing after it runs in the beat it hits."""


def fail_publish(app: Celeriac, monkeypatch: pytest.MonkeyPatch, how: str, times: int = 1) -> None:
    """The broker's next ``times`` publishes fail: ``before`` storing the message (ConnectionError),
    ``after`` storing it (a lost reply), or ``kill`` the beat before storing it."""
    broker = app.broker
    real = broker.publish
    left = [times]

    def publish(publication: Any) -> None:
        if left[0] <= 0:
            return real(publication)
        left[0] -= 1
        if how == "kill":
            raise Killed
        if how == "after":
            real(publication)
        raise ConnectionError(f"broker down ({how} storing)")

    monkeypatch.setattr(broker, "publish", publish)


def test_a_failed_send_is_tried_again_with_the_same_task_id(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    app = make_app(ping={"task": "proj.ping", "schedule": 1.0})
    clock = Clock()
    (beat,) = beats(app, clock, "a")
    beat.run_once()
    fail_publish(app, monkeypatch, "before", times=2)
    step(clock, 1.0, beat)  # fails
    assert sent(app) == []
    assert beat.store.states()["ping"].unsent
    step(clock, 0.1, beat)  # fails again
    step(clock, 0.1, beat)  # goes through
    got = app.broker.fetch(["celery"], 10, timeout=0)
    assert [d.message.headers["beat_tick"] for d in got] == [T0 + 1]
    assert got[0].message.task_id == tick_task_id("ping", T0 + 1)
    assert not beat.store.states()["ping"].unsent
    step(clock, 1.0, beat)
    assert sent(app) == [("ping", T0 + 2)]


def test_a_failed_send_is_retried_after_a_poll_not_at_once(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    app = make_app(ping={"task": "proj.ping", "schedule": 1.0})
    clock = Clock()
    (beat,) = beats(app, clock, "a")
    beat.run_once()
    fail_publish(app, monkeypatch, "before")
    clock.now += 1.0
    assert beat.run_once() == pytest.approx(beat.poll_interval)


def test_a_beat_killed_between_claim_and_publish_leaves_the_tick_to_the_next_leader(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    app = make_app(ping={"task": "proj.ping", "schedule": 1.0})
    clock = Clock()
    a, b = beats(app, clock, "a", "b")
    step(clock, 0.0, a, b)
    step(clock, 1.0, a, b)
    assert sent(app) == [("ping", T0 + 1)]
    fail_publish(app, monkeypatch, "kill")
    clock.now += 1.0
    with pytest.raises(Killed):
        a.run_once()  # claimed T0 + 2 and died before the broker had its message
    assert sent(app) == []
    for _ in range(20):  # the lease runs out; b takes over and sends T0 + 2 after all
        step(clock, 0.1, b)
    assert b.is_leader
    got = app.broker.fetch(["celery"], 10, timeout=0)
    ticks = [d.message.headers["beat_tick"] for d in got]
    assert ticks == [T0 + i for i in range(2, int(clock.now - T0 + 1e-6) + 1)]
    assert got[0].message.task_id == tick_task_id("ping", T0 + 2), "the same task id"


def test_in_three_steps_a_send_that_raises_after_storing_is_sent_twice_with_one_id(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The documented limit of the three-step path (a store on another server than the broker):
    the publish raised, so beat cannot tell, and sends the tick again with the same task id.
    (SQLite and Redis claim and store in one step instead: tests/beat/test_tick_faults.py.)"""
    app = make_app(ping={"task": "proj.ping", "schedule": 1.0})
    clock = Clock()
    (beat,) = beats(app, clock, "a")
    beat.run_once()
    fail_publish(app, monkeypatch, "after")
    step(clock, 1.0, beat)
    step(clock, 0.1, beat)
    got = app.broker.fetch(["celery"], 10, timeout=0)
    assert [d.message.task_id for d in got] == [tick_task_id("ping", T0 + 1)] * 2


def test_an_unsent_tick_is_sent_again_while_late_and_given_up_once_missed() -> None:
    e, keep = entry(1), entry(1, catchup=True)
    # Late (no older than grace): sent again.
    assert next_step(e, 100.0, 103.0, 4.0, UTC, unsent=True) == Step(
        100.0, send=True, recorded=True
    )
    # Missed: given up...
    assert next_step(e, 100.0, 104.5, 4.0, UTC, unsent=True) == Step(
        100.0, send=False, missed=True, recorded=True
    )
    # ...or, for a catch-up entry, sent as its one catch-up message,
    assert next_step(keep, 100.0, 104.5, 4.0, UTC, unsent=True) == Step(
        100.0, send=True, missed=True, recorded=True
    )
    # unless a later missed tick will be sent for the outage instead.
    assert next_step(keep, 100.0, 3600.0, 4.0, UTC, unsent=True) == Step(
        100.0, send=False, missed=True, recorded=True
    )
    assert next_step(keep, 100.0, 3600.0, 4.0, UTC) == Step(3596.0, send=True, missed=True)


# -- several beats -----------------------------------------------------------------------------
def test_only_the_leader_sends_and_each_tick_goes_out_once() -> None:
    app = make_app(ping={"task": "proj.ping", "schedule": 1.0})
    clock = Clock()
    group = beats(app, clock, "a", "b", "c")
    step(clock, 0.0, *group)
    for _ in range(30):
        step(clock, 0.5, *group)
    assert sum(b.is_leader for b in group) == 1
    ticks = [t for _, t in sent(app)]
    assert ticks == [T0 + i for i in range(1, 16)]


def test_takeover_continues_from_the_recorded_tick() -> None:
    app = make_app(ping={"task": "proj.ping", "schedule": 1.0})
    clock = Clock()
    a, b = beats(app, clock, "a", "b")
    step(clock, 0.0, a, b)
    for _ in range(10):
        step(clock, 0.5, a, b)
    assert a.is_leader and not b.is_leader
    # a dies; b keeps looking every poll interval and takes over once the lease runs out.
    for _ in range(40):
        step(clock, 0.1, b)
    assert b.is_leader
    ticks = [t for _, t in sent(app)]
    expected = [T0 + i for i in range(1, int(clock.now - T0 + 1e-6) + 1)]
    assert len(expected) >= 8
    assert ticks == expected, "no tick lost or doubled across takeover"


def test_a_beat_whose_lease_ran_out_cannot_send() -> None:
    app = make_app(ping={"task": "proj.ping", "schedule": 1.0})
    clock = Clock()
    a, b = beats(app, clock, "a", "b")
    a.run_once()
    b.run_once()
    step(clock, 1.0, a)
    assert sent(app) == [("ping", T0 + 1)]
    # a stalls past its lease (it still believes it leads); b takes over.
    clock.now += a.lease_ttl + 0.1
    b.run_once()
    assert b.is_leader
    a._renew_at = float("inf")  # as if a woke up mid-loop, before checking its lease
    a.run_once()
    assert sent(app) == [("ping", T0 + 2)], "b sent the late tick; a sent nothing"
    step(clock, 0.0, a, b)
    assert not a.is_leader


def test_missed_ticks_skipped_or_caught_up_after_an_outage() -> None:
    app = make_app(
        skip={"task": "proj.ping", "schedule": 1.0},
        keep={"task": "proj.ping", "schedule": 1.0, "catchup": True},
    )
    clock = Clock()
    (a,) = beats(app, clock, "a", grace=0.5)
    a.run_once()
    assert {n: s.last_sent for n, s in a.store.states().items()} == {"keep": None, "skip": None}
    step(clock, 1.0, a)
    assert sorted(sent(app)) == [("keep", T0 + 1), ("skip", T0 + 1)]
    a.stop()
    # Every beat is down for an hour, then one starts on the same store.
    clock.now += 3600.5
    restarted = Beat(app, store=a.store, clock=clock, holder="z", grace=0.5)
    restarted.run_once()
    assert sent(app) == [("keep", T0 + 3601)], "one catch-up message, none for 'skip'"
    # The last send (beat's "last run") is the last message's, not the anchor or the skip.
    states = a.store.states()
    assert (states["skip"].last_tick, states["skip"].last_sent) == (T0 + 3601, T0 + 1)
    assert (states["keep"].last_tick, states["keep"].last_sent) == (T0 + 3601, T0 + 3601.5)
    step(clock, 1.0, restarted)
    assert sorted(sent(app)) == [("keep", T0 + 3602), ("skip", T0 + 3602)]


def test_paused_entries_stop_and_resume_without_a_burst() -> None:
    app = make_app(ping={"task": "proj.ping", "schedule": 1.0})
    clock = Clock()
    (beat,) = beats(app, clock, "a", grace=0.5)
    beat.run_once()
    store = beat.store
    store.set_paused("ping", True)
    for _ in range(5):
        step(clock, 1.0, beat)
    assert sent(app) == []
    store.set_paused("ping", False)
    step(clock, 0.2, beat)
    # Ticks 1-4 were missed and are skipped; tick 5 is only 0.2 s late (within grace).
    assert sent(app) == [("ping", T0 + 5)]
    step(clock, 1.0, beat)
    assert sent(app) == [("ping", T0 + 6)]


def test_dynamic_entries_are_picked_up_changed_and_removed(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    app = make_app()
    clock = Clock()
    (beat,) = beats(app, clock, "a")
    monkeypatch.setattr(Celeriac, "beat_store", property(lambda _app: beat.store))
    beat.run_once()
    api.add_entry(app, "dyn", "proj.ping", 2.0, args=[1])
    step(clock, 0.1, beat)  # seen: anchored
    for _ in range(4):
        step(clock, 1.0, beat)
    assert [e for e, _ in sent(app)] == ["dyn", "dyn"]
    with pytest.raises(ConfigurationError, match="exists already"):
        api.add_entry(app, "dyn", "proj.ping", 1.0)
    api.add_entry(app, "dyn", "proj.ping", 1.0, replace=True)
    for _ in range(3):
        step(clock, 1.0, beat)
    assert len(sent(app)) == 3
    api.remove_entry(app, "dyn")
    for _ in range(3):
        step(clock, 1.0, beat)
    assert sent(app) == []
    with pytest.raises(ConfigurationError, match="no beat entry named 'dyn'"):
        api.remove_entry(app, "dyn")


# -- loading -----------------------------------------------------------------------------------
def test_unknown_task_is_an_error_naming_the_entry() -> None:
    app = make_app(nightly={"task": "proj.pong", "schedule": 5})
    with pytest.raises(
        ConfigurationError, match=r"'nightly'.*'proj.pong'.*did you mean 'proj.ping'"
    ):
        Beat(app, store=MemoryBeatStore()).load()


def test_unknown_task_is_allowed_when_marked_unregistered() -> None:
    app = make_app(
        a={"task": "other.task", "schedule": 5, "unregistered": True},
        b={"task": "other.task", "schedule": 5, "options": {"unregistered": True, "queue": "q"}},
    )
    beat = Beat(app, store=MemoryBeatStore())
    beat.load()
    assert beat.entries["b"].options == {"queue": "q"}


def test_without_task_modules_unknown_tasks_only_warn(caplog: pytest.LogCaptureFixture) -> None:
    app = Celeriac("bare", broker_url="memory://")
    app.conf.beat_schedule = {"remote": {"task": "proj.ping", "schedule": 5}}
    with caplog.at_level(logging.WARNING, logger="celeriac.beat"):
        Beat(app, store=MemoryBeatStore()).load()
    assert "'remote'" in caplog.text and "no task named 'proj.ping'" in caplog.text


def test_bad_options_are_an_error_naming_the_entry() -> None:
    app = make_app(odd={"task": "proj.ping", "schedule": 5, "options": {"colour": "red"}})
    with pytest.raises(ConfigurationError, match=r"'odd'.*colour"):
        Beat(app, store=MemoryBeatStore()).load()


def test_bad_timezone_is_a_configuration_error() -> None:
    app = make_app()
    app.conf.timezone = "Mars/Olympus"
    with pytest.raises(ConfigurationError, match="Mars/Olympus"):
        Beat(app, store=MemoryBeatStore())


# -- Celery's API ------------------------------------------------------------------------------
def test_add_periodic_task_from_on_after_configure() -> None:
    app = make_app()
    ping = app.tasks["proj.ping"]

    @api.on_after_configure(app).connect
    def setup(sender: Celeriac, **kwargs: Any) -> None:
        api.add_periodic_task(sender, 10.0, ping.s(2), name="ping every 10", expires=5)
        api.add_periodic_task(sender, crontab(minute=0, hour=7), ping.s(n=3), catchup=True)

    beat = Beat(app, store=MemoryBeatStore())
    beat.load()
    every = beat.entries["ping every 10"]
    assert (every.task, every.args, every.options) == ("proj.ping", (2,), {"expires": 5})
    morning = beat.entries["proj.ping(n=3)"]
    assert morning.catchup and morning.kwargs == {"n": 3}


def test_a_bad_schedule_in_on_after_configure_stops_beat() -> None:
    app = make_app()

    @api.on_after_configure(app).connect
    def setup(sender: Celeriac, **kwargs: Any) -> None:
        api.add_periodic_task(sender, crontab(minute="99"), "proj.ping", name="broken")

    with pytest.raises(ConfigurationError, match=r"entry 'broken'.*minute='99'"):
        Beat(app, store=MemoryBeatStore()).load()


# -- the real loop -----------------------------------------------------------------------------
def test_embedded_beat_thread_sends_and_releases_the_lease_on_stop() -> None:
    app = make_app(fast={"task": "proj.ping", "schedule": 0.1})
    store = MemoryBeatStore()
    beat = start_embedded_beat(app, store=store)
    deadline = time.monotonic() + 5
    got: list[tuple[str, float]] = []
    while len(got) < 3 and time.monotonic() < deadline:
        got += sent(app)
        time.sleep(0.02)
    beat.stop()
    assert len(got) >= 3
    assert store.leader() is None, "a stopping leader hands the lease back"


class Boom(schedule):
    """A user's schedule with a bug in it."""

    def next_after(self, after: float, tz: dt.tzinfo) -> float | None:
        raise RuntimeError("bug in a custom schedule")


def test_a_failing_entry_does_not_stop_the_others(caplog: pytest.LogCaptureFixture) -> None:
    app = make_app(
        bad={"task": "proj.ping", "schedule": Boom(1.0)},
        good={"task": "proj.ping", "schedule": 1.0},
    )
    clock = Clock()
    (beat,) = beats(app, clock, "a")
    beat.run_once()
    with caplog.at_level(logging.ERROR, logger="celeriac.beat"):
        for _ in range(3):
            step(clock, 1.0, beat)
    assert [e for e, _ in sent(app)] == ["good"] * 3
    assert caplog.text.count("entry 'bad' failed") == 1, "logged once, then skipped"
