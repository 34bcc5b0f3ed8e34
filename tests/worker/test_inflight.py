"""The lease window: fixed at ``concurrency x worker_prefetch_multiplier``, or, with slots
and a growth given, grown for short tasks up to growth times that and shrunk again as they get
longer."""

from __future__ import annotations

import threading

import pytest

from celeriac.worker import inflight as inflight_module
from celeriac.worker.inflight import LEASE_AHEAD, InFlight

GROWTH = 4


def settle(inflight: InFlight, runtimes: list[float]) -> None:
    for runtime in runtimes:
        inflight.unfinished += 1
        inflight.reported(runtime)


def test_without_slots_or_growth_the_window_is_fixed() -> None:
    for inflight in (InFlight(8, 4, growth=GROWTH), InFlight(8, 4, slots=2, growth=1)):
        settle(inflight, [1e-5] * 10)
        assert (inflight.prefetch, inflight.refill, inflight.runtime) == (8, 4, 0.0)


def test_short_tasks_grow_the_window_and_longer_ones_shrink_it_to_the_floor() -> None:
    inflight = InFlight(8, 4, slots=2, growth=GROWTH)  # 2 slots, 4 each at the floor
    settle(inflight, [LEASE_AHEAD / 100])
    assert (inflight.prefetch, inflight.refill) == (2 * 4 * GROWTH, 4 * GROWTH)
    settle(inflight, [LEASE_AHEAD / 6] * 60)  # the average converges on 6 per slot
    assert (inflight.prefetch, inflight.refill) == (12, 6)
    settle(inflight, [LEASE_AHEAD] * 60)  # one per slot would do: never below the floor
    assert (inflight.prefetch, inflight.refill) == (8, 4)


def test_tasks_that_never_ran_do_not_count() -> None:
    inflight = InFlight(4, 2, slots=1, growth=GROWTH)
    settle(inflight, [0.0] * 5)  # revoked, expired, refused before they ran
    assert (inflight.prefetch, inflight.runtime) == (4, 0.0)


def test_a_grown_window_wakes_a_fetcher_waiting_for_room() -> None:
    inflight = InFlight(4, 2, slots=1, growth=GROWTH)
    inflight.unfinished = 4
    running = threading.Event()
    running.set()
    got: list[int] = []
    waiter = threading.Thread(target=lambda: got.append(inflight.wait_for_room(running)))
    waiter.start()
    inflight.reported(LEASE_AHEAD / 100)  # room 13: past the refill point of 2 at once
    waiter.join(0.4)  # sooner than its own 0.5 s look
    assert not waiter.is_alive()
    assert got == [4 * GROWTH - 3]


def test_resizing_the_pool_keeps_the_window_per_slot() -> None:
    inflight = InFlight(8, 4, slots=2, growth=GROWTH)
    settle(inflight, [LEASE_AHEAD / 100])
    inflight.resized(3, 4)
    assert (inflight.prefetch, inflight.refill) == (3 * 4 * GROWTH, 3 * 4 * GROWTH // 2)
    fixed = InFlight(8, 4)
    fixed.resized(3, 4)
    assert (fixed.prefetch, fixed.refill) == (12, 6)


def test_a_consumer_is_released_once_its_window_stayed_halved(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    inflight = InFlight(4, 2, slots=1, growth=GROWTH)
    settle(inflight, [LEASE_AHEAD / 100])  # 16
    inflight.unfinished += 1
    # the average: 0.01 + 0.1 x (1.7 - 0.01) = 0.179 of LEASE_AHEAD: 5 a slot, but only just
    # now: a dip (a preempted task) does not release the consumer
    assert inflight.reported(LEASE_AHEAD * 1.7) is False
    assert inflight.prefetch == 5
    monkeypatch.setattr(inflight_module, "SETTLE", 0.0)
    inflight.unfinished += 1
    assert inflight.reported(LEASE_AHEAD / 5) is True  # still low, SETTLE (now 0) later
    releases = []
    for _ in range(30):  # 4 <-> 5 a slot from here on: no more releases
        inflight.unfinished += 1
        releases.append(inflight.reported(LEASE_AHEAD / 4))
    assert (inflight.prefetch, releases) == (4, [False] * 30)


def test_a_short_dip_of_the_window_releases_nothing() -> None:
    inflight = InFlight(4, 2, slots=1, growth=GROWTH)
    got = []
    for runtime in [LEASE_AHEAD / 100] * 5 + [LEASE_AHEAD * 3] + [LEASE_AHEAD / 100] * 30:
        inflight.unfinished += 1
        got.append(inflight.reported(runtime))
    assert got == [False] * 36
    assert inflight.prefetch == 16  # back up: the spike averaged out
