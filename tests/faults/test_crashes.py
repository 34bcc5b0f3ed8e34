"""Crashes: kill -9 of a worker (#1), of one prefork child (#2), at fetch time (#3)."""

from __future__ import annotations

import random
import time

from tests.faults.cluster import Producer, wait_for
from tests.faults.matrix import cells


@cells("kill_worker")
def test_kill_worker_mid_task(cluster, broker, record, seed=None):
    """``seed``: the long suite's repetitions kill at a random point of the long task."""
    c = cluster(broker, vt=1.5)
    first = c.start_worker()
    tasks = c.tasks
    long = [tasks.rec.delay(2.0).id for _ in range(2)]
    short = [tasks.rec.delay(0.0).id for _ in range(20)]
    wait_for(lambda: any(c.ledger.running().get(t) for t in long), 20, "a long task to run")
    time.sleep(0.5 if seed is None else random.Random(seed).uniform(0.05, 1.9))
    killed_at = c.kill(first)
    started, done = c.ledger.started(), c.ledger.completed()
    in_flight = [t for t in long + short if started.get(t) and not done.get(t)]
    c.start_worker()
    ids = long + short
    wait_for(lambda: c.all_done(ids), 30, "every task to complete")
    recovered = max(end for t in in_flight for (_, _, _, end) in c.ledger.runs(t) if end)
    lost, dups, counts = c.tally(ids)
    record(
        lost=lost,
        duplicated=dups,
        allowed=len(in_flight),
        recover=recovered - killed_at,
        detail=f"{len(in_flight)} task(s) in flight at the kill, run again",
    )
    assert lost == 0
    assert dups == 0, counts  # a killed run never completed: every task completed once
    started = c.ledger.started()
    assert {t for t in ids if started[t] > 1} == set(in_flight)  # only those were run again
    # re-run within the lease (1.5 s) + the task (2 s) + a worker start and margin (3 s)
    assert recovered - killed_at < 1.5 + 2 + 3


@cells("kill_child")
def test_kill_child_charges_only_its_running_task(cluster, broker, record, seed=None):
    c = cluster(broker, vt=1.5)
    tasks = c.tasks
    # Sent before the worker starts, so each child leases a batch of 4 (the default prefetch):
    # the child that runs `long` has finished two tasks before it and holds one behind it.
    # CI: `long` SIGKILLs its own child as it starts (the same point every run); the long
    # suite's seeds kill it from outside at a random point of its run.
    ids = [tasks.rec.delay(0.2).id for _ in range(2)]
    long = (tasks.rec if seed is not None else tasks.killed_once).delay(2.0).id
    ids += [long] + [tasks.rec.delay(0.2).id for _ in range(5)]
    worker = c.start_worker()
    if seed is not None:
        wait_for(lambda: c.ledger.running().get(long), 30, "the long task to start")
        time.sleep(random.Random(seed).uniform(0.0, 1.9))
        c.kill_running(long)
    else:
        wait_for(lambda: c.ledger.started().get(long), 30, "the child to kill itself")
    killed_at = c.ledger.runs(long)[0][2]
    wait_for(lambda: c.all_done(ids), 30, "every task to complete")
    time.sleep(0.5)  # a wrongly charged task would show up as a second run or a dead letter
    lost, dups, counts = c.tally(ids)
    started = c.ledger.started()
    rerun = sorted(t for t in ids if started[t] > 1)
    states = c.states(ids)
    bad_states = {t: s for t, s in states.items() if s != "SUCCESS"}
    letters = c.dead_letters()
    end = max(e for (_, _, _, e) in c.ledger.runs(long) if e)
    record(
        lost=lost,
        duplicated=dups,
        allowed=0,
        recover=end - killed_at,
        detail=f"run again: the killed task and {len(set(rerun) - {long})} other(s) "
        f"({len(set(rerun) & set(ids[:2]))} finished before the kill), not SUCCESS: "
        f"{len(bad_states)}, dead-lettered: {len(letters)}",
    )
    assert lost == 0 and dups == 0, counts
    assert rerun == [long]
    assert bad_states == {}
    assert letters == []
    assert worker.alive()


@cells("crash_at_fetch")
def test_kills_while_fetching_lose_nothing(cluster, broker, record):
    c = cluster(broker, vt=1.5)
    # twice what a worker runs: its prefetch is full at every kill, and it fetches all the time
    producer = Producer(c, rate=400, seconds=0.01)
    rnd = random.Random(f"crash_at_fetch-{broker}")
    allowed: set[str] = set()
    kills = []
    for _ in range(3):
        worker = c.start_worker()
        time.sleep(rnd.uniform(0.1, 0.6))
        kills.append(c.kill(worker))
        ids = list(producer.sent)
        started, done = c.ledger.started(), c.ledger.completed()
        states = c.states(t for t in ids if started.get(t))
        # in flight at the kill: started, and not completed with its result stored
        allowed |= {
            t for t in ids if started.get(t) and not (done.get(t) and states.get(t) == "SUCCESS")
        }
    c.start_worker()
    producer.stop()
    ids = producer.sent
    wait_for(lambda: c.all_done(ids), 30, "every task to complete")
    time.sleep(0.5)
    lost, dups, counts = c.tally(ids)
    extra = {t for t, n in counts.items() if n > 1} - allowed
    last = max(e for t in ids for (_, _, _, e) in c.ledger.runs(t) if e)
    # leased by a killed worker before it ran them: their first run is a redelivery
    came_back = sum(1 for t in ids if min(r[0] for r in c.ledger.runs(t)) > 1)
    record(
        lost=lost,
        duplicated=dups,
        allowed=len(allowed),
        recover=max(0.0, last - kills[-1]),
        detail=f"{len(ids)} tasks, {len(kills)} kills at seeded random times: {came_back} "
        f"leased and not started at a kill came back, {len(allowed)} were running",
    )
    assert lost == 0
    assert extra == set(), f"{len(extra)} tasks not in flight at a kill ran twice"
