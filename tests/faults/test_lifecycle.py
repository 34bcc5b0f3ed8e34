"""Worker lifecycle: graceful shutdown under load (#21), revocations that outlive workers
(#22), and a fleet mixing Celeriac and Celery 5 workers (#23)."""

from __future__ import annotations

import time

from tests.faults.cluster import wait_for
from tests.faults.matrix import cells


@cells("graceful_shutdown")
def test_sigterm_under_load(cluster, broker, record):
    c = cluster(broker, vt=2.0)
    worker = c.start_worker()  # -c 2, 4 prefetched per child
    tasks = c.tasks
    ids = [tasks.rec.delay(1.0).id for _ in range(10)]
    wait_for(lambda: len(c.ledger.running()) == 2, 20, "both children busy")
    running = set(c.ledger.running())
    began = time.time()
    code = c.stop(worker)
    took = time.time() - began
    finished_there = {t for t in running if c.ledger.completed().get(t)}
    c.start_worker()
    wait_for(lambda: c.all_done(ids), 40, "every task to complete")
    time.sleep(0.5)
    lost, dups, _ = c.tally(ids)
    started = c.ledger.started()
    twice = [t for t in ids if started[t] > 1]
    record(
        lost=lost,
        duplicated=dups,
        allowed=0,
        recover=took,
        detail=f"exit {code} after {took:.1f} s; {len(finished_there)} of {len(running)} running "
        f"tasks finished before it; started twice: {len(twice)}",
    )
    assert lost == 0 and dups == 0 and twice == []
    assert finished_there == running
    assert code == 0
    assert took < 1.0 + 5


@cells("revocation")
def test_revoked_tasks_never_run_on_later_workers(cluster, broker, record):
    c = cluster(broker)
    tasks = c.tasks
    revoked = [tasks.rec.delay(0.0) for _ in range(20)]
    for r in revoked:
        r.revoke()
    good = [tasks.rec.delay(0.0).id for _ in range(10)]
    first = c.start_worker()
    wait_for(lambda: c.all_done(good[:1]), 20, "a first task")
    c.stop(first)  # every worker restarted: revocations must not live only in their memory
    c.start_worker()
    c.start_worker()
    wait_for(lambda: c.all_done(good), 20, "the tasks not revoked")
    time.sleep(1.0)
    ran = [r.id for r in revoked if c.ledger.started().get(r.id)]
    states = c.states(r.id for r in revoked)
    not_revoked = [t for t, s in states.items() if s != "REVOKED"]
    lost, dups, _ = c.tally(good)
    record(
        lost=lost,
        duplicated=dups,
        allowed=0,
        detail=f"{len(ran)} of 20 revoked tasks ran; {len(not_revoked)} not stored as REVOKED",
    )
    assert ran == []
    assert not_revoked == []
    assert lost == 0 and dups == 0


@cells("mixed_fleet")
def test_celery_and_celeriac_workers_recover_each_others_tasks(cluster, broker, record):
    options = {"celery_visibility_timeout": 2.0} if broker == "redis" else {}
    c = cluster(broker, vt=2.0, broker_transport_options=options)
    tasks = c.tasks
    # A Celery worker dies mid-task: a Celeriac worker runs the task.
    celery = c.start_celery_worker("celery1")
    a = tasks.rec.delay(3.0).id
    wait_for(lambda: c.ledger.running().get(a), 30, "Celery to start the task")
    killed_a = c.kill(celery)
    ours = c.start_worker(concurrency=1)
    wait_for(lambda: c.all_done([a]), 30, "a Celeriac worker to run Celery's abandoned task")
    took_a = max(r[3] or 0 for r in c.ledger.runs(a)) - killed_a
    # A Celeriac worker dies mid-task: a Celery worker runs the task.
    b = tasks.rec.delay(3.0).id
    wait_for(lambda: c.ledger.running().get(b), 30, "Celeriac to start the task")
    killed_b = c.kill(ours)
    c.start_celery_worker("celery2")
    done = wait_for(lambda: c.all_done([b]), 40, "Celery to run Celeriac's abandoned task")
    took_b = max(r[3] or 0 for r in c.ledger.runs(b)) - killed_b
    bad = [
        w.name
        for w in c.workers
        if any(s in w.log() for s in ("Traceback", "DecodeError", "Unrecoverable"))
    ]
    lost, dups, _ = c.tally([a, b])
    record(
        lost=lost,
        duplicated=dups,
        allowed=0,
        recover=max(took_a, took_b),
        detail=f"Celery -> Celeriac {took_a:.1f} s, Celeriac -> Celery {took_b:.1f} s; "
        f"logs with errors: {bad or 'none'}",
    )
    assert done and lost == 0 and dups == 0
    assert bad == []
