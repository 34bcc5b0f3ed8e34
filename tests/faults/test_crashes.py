"""Crashes: kill -9 of a worker (#1), of one prefork child (#2), at fetch time (#3)."""

from __future__ import annotations

import time

from tests.faults.cluster import wait_for
from tests.faults.matrix import cells


@cells("kill_worker")
def test_kill_worker_mid_task(cluster, broker, record):
    c = cluster(broker, vt=2.0)
    first = c.start_worker()
    tasks = c.tasks
    long = [tasks.rec.delay(3.0).id for _ in range(2)]
    short = [tasks.rec.delay(0.0).id for _ in range(20)]
    wait_for(lambda: any(c.ledger.running().get(t) for t in long), 20, "a long task to run")
    time.sleep(0.5)
    killed_at = c.kill(first)
    started, done = c.ledger.started(), c.ledger.completed()
    in_flight = [t for t in long + short if started.get(t) and not done.get(t)]
    c.start_worker()
    ids = long + short
    wait_for(lambda: c.all_done(ids), 30, "every task to complete")
    recovered = max(end for t in in_flight for (_, _, _, end) in c.ledger.runs(t) if end)
    lost, dups, counts = c.tally(ids)
    record(lost=lost, duplicated=dups, allowed=len(in_flight), recover=recovered - killed_at)
    assert lost == 0
    assert dups == 0, counts  # a killed run never completed: every task completed once
    started = c.ledger.started()
    assert {t for t in ids if started[t] > 1} == set(in_flight)  # only those were run again
    # re-run within the lease (2 s) + the task (3 s) + a worker start and margin (3 s)
    assert recovered - killed_at < 2 + 3 + 3
