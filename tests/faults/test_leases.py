"""Leases: a long task (#8), a task holding the GIL (#8, issue 13 d), countdowns past the lease
(#9)."""

from __future__ import annotations

import time

from tests.faults.cluster import await_, wait_for
from tests.faults.matrix import cells


@cells("long_task")
def test_long_task_outlives_its_lease_and_runs_once(cluster, broker, record):
    c = cluster(broker, vt=1.5)
    c.start_worker("--prefetch-multiplier", "1", concurrency=1)
    long = c.tasks.rec.delay(4.5)  # 3 x the visibility timeout
    wait_for(lambda: c.ledger.running().get(long.id), 20, "the long task to start")
    c.start_worker("--prefetch-multiplier", "1", concurrency=1)  # idle, polling all along
    wait_for(lambda: c.all_done([long.id]), 20, "the long task to finish")
    time.sleep(1.5)  # a lease lost on the way would show as a second start by now
    started = c.ledger.started()[long.id]
    record(lost=0, duplicated=int(started > 1), allowed=0, detail=f"started {started} time(s)")
    assert started == 1


@cells("gil_lease")
def test_task_holding_the_gil_keeps_its_lease(cluster, broker, record):
    c = cluster(broker, vt=1.5)
    c.start_worker("--prefetch-multiplier", "1", concurrency=1)
    hog = c.tasks.gil_hog.delay(5.0)  # 5 s in one C call, GIL held throughout
    wait_for(lambda: c.ledger.running().get(hog.id), 20, "the task to start")
    c.start_worker("--prefetch-multiplier", "1", concurrency=1)
    wait_for(lambda: c.ledger.completed().get(hog.id), 60, "the task to finish")
    await_(lambda: c.ledger.started()[hog.id] > 1 and c.ledger.completed()[hog.id] > 1, 2.0)
    runs = c.ledger.runs(hog.id)
    held = (runs[0][3] or 0) - runs[0][2]
    record(
        lost=0,
        duplicated=int(len(runs) > 1),
        allowed=0,
        detail=f"GIL held {held:.1f} s (lease 1.5 s); started {len(runs)} time(s)",
    )
    assert held > 3 * 1.5, "the regex did not hold the GIL long enough to test anything"
    assert len(runs) == 1


@cells("eta_lease")
def test_countdown_past_the_lease_runs_once_on_time(cluster, broker, record):
    c = cluster(broker, vt=0.8)
    c.start_worker()
    c.start_worker()
    sent: dict[str, float] = {}
    for _ in range(30):
        at = time.time()
        sent[c.tasks.rec.apply_async(countdown=4.0).id] = at + 4.0  # 5 x the lease
    wait_for(lambda: c.all_done(sent), 30, "every countdown to run")
    time.sleep(1.0)
    lost, dups, _ = c.tally(sent)
    lateness = [c.ledger.runs(t)[0][2] - eta for t, eta in sent.items()]
    record(
        lost=lost,
        duplicated=dups,
        allowed=0,
        detail=f"earliest {min(lateness):+.2f} s, latest {max(lateness):+.2f} s from the ETA",
    )
    assert lost == 0 and dups == 0
    assert min(lateness) >= -0.05  # not before its ETA (one clock: this machine's)
    assert max(lateness) <= 2.0
