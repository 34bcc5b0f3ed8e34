"""Capacity: per-task fairness (issue 13 f), the memory limit during a task (issue 13 g), a big
backlog (#17) and a producer faster than its workers (#18)."""

from __future__ import annotations

import os
import threading
import time

from celeriac import group
from tests.faults.cluster import Cluster, await_, rss_kb, wait_for
from tests.faults.matrix import cells


def _span(c: Cluster, ids: list[str]) -> float:
    runs = [r for t in ids for r in c.ledger.runs(t)]
    return max(r[3] or 0 for r in runs) - min(r[2] for r in runs)


@cells("fairness")
def test_tasks_spread_over_free_slots(cluster, broker, record):
    c = cluster(broker)
    tasks = c.tasks
    four = [tasks.rec.delay(1.0).id for _ in range(4)]  # queued before the worker starts
    c.start_worker()  # -c 2
    await_(lambda: c.all_done(four), 6)
    span = _span(c, four)
    long = tasks.rec.delay(3.0).id
    short = [tasks.rec.delay(0.0).id for _ in range(6)]  # a slot is free all along
    sent = time.time()
    await_(lambda: c.all_done(short), 5)
    waited = max(r[3] or 0 for t in short for r in c.ledger.runs(t)) - sent
    wait_for(lambda: c.all_done([long]), 10, "the long task")
    record(
        lost=c.tally(four + short + [long])[0],
        duplicated=c.tally(four + short + [long])[1],
        allowed=0,
        detail=f"4 x 1 s on -c 2 took {span:.1f} s (2 is fair); 6 short tasks sent with a 3 s "
        f"one took {waited:.1f} s",
    )
    # Fair: 2 s (before, a child that leased all four ran them one after another: 4 s).
    assert span < 3.2, span
    # Leased behind the long task, they go back after 0.1 s and run on the free child.
    assert waited < 1.0, waited


@cells("memory_limit")
def test_memory_limit_stops_a_task_that_grows_past_it(cluster, broker, record):
    c = cluster(broker)
    limit_kb = 150 * 1024
    worker = c.start_worker("--max-memory-per-child", str(limit_kb), concurrency=1)
    hog = c.tasks.hog_memory.delay(600, 3.0)  # 600 MB over 3 s
    wait_for(lambda: c.ledger.running().get(hog.id), 20, "the task to start")
    pid = c.ledger.running()[hog.id]
    peak = 0
    deadline = time.monotonic() + 6
    while time.monotonic() < deadline and not c.ledger.completed().get(hog.id):
        peak = max(peak, rss_kb(pid))
        time.sleep(0.05)
    finished = bool(c.ledger.completed().get(hog.id))
    record(
        detail=f"limit 150 MB: the task {'ran to its end' if finished else 'was stopped'}; its "
        f"process peaked at {peak // 1024} MB",
    )
    assert not finished
    assert peak < 2 * limit_kb
    assert worker.alive()


def _leased(c: Cluster) -> int | None:
    """Messages the broker has handed out and not had back (None: not observable here)."""
    broker = c.app.broker
    if c.broker == "sqlite":
        import sqlite3

        db = sqlite3.connect(c.url.removeprefix("sqlite:///"), timeout=30)
        try:
            return int(
                db.execute("SELECT COUNT(*) FROM celeriac_messages WHERE state = 2").fetchone()[0]
            )
        finally:
            db.close()
    if c.broker == "redis":
        prefix = c.conf["broker_transport_options"]["global_keyprefix"]
        return int(broker.client.hlen(f"{prefix}unacked"))
    return None  # RabbitMQ enforces basic.qos itself


@cells("backlog")
def test_backlog_does_not_grow_the_worker(cluster, broker, record):
    c = cluster(broker)
    tasks = c.tasks
    n = 5_000 if broker == "amqp" else 10_000
    for _ in range(n // 1000):
        group(tasks.rec.s() for _ in range(1000)).apply_async()
    queue = c.conf.get("task_default_queue", "celery")
    assert c.app.broker.depth(queue) == n
    worker = c.start_worker()
    began = time.time()
    peak_rss, peak_leased = 0, 0
    while time.time() - began < 2.0:
        pids = [worker.pid, *worker.children()]
        peak_rss = max(peak_rss, *(rss_kb(p) for p in pids))
        leased = _leased(c)
        peak_leased = max(peak_leased, leased or 0)
        time.sleep(0.1)
    c.stop(worker)
    done = c.ledger.completed()
    ran, dups = len(done), sum(1 for v in done.values() if v > 1)
    record(
        lost=0,
        duplicated=dups,
        allowed=0,
        detail=f"{n} queued; in 2 s ran {ran} ({ran / 2:.0f}/s); largest process "
        f"{peak_rss // 1024} MB; leased at most "
        + (
            "(RabbitMQ's qos)"
            if broker == "amqp"
            else f"{peak_leased} (prefetch 8, up to 32 for tasks this short)"
        ),
    )
    assert dups == 0
    assert peak_rss < 150 * 1024
    # 2 slots x worker_prefetch_multiplier (4) x worker_prefetch_growth (4): the no-op tasks
    # run in well under 4 ms, so the window grows to its configured bound, and no further.
    assert peak_leased <= 2 * 4 * c.app.conf.worker_prefetch_growth
    assert c.app.broker.depth(queue) == n - ran  # the rest is still there, returned


@cells("backpressure")
def test_producer_faster_than_its_workers(cluster, broker, record):
    c = cluster(broker)
    c.start_worker(env={"FAULT_RATE_LIMIT": "100/s"})  # the slow consumer
    tasks = c.tasks
    sent: list[str] = []
    failed = [0]
    stop = threading.Event()

    def produce() -> None:
        while not stop.is_set():
            try:
                sent.append(tasks.limited.delay().id)
            except Exception:
                failed[0] += 1

    tasks.limited.delay()  # connections open before the measurement
    before = rss_kb(os.getpid())
    threads = [threading.Thread(target=produce, daemon=True) for _ in range(4)]
    for t in threads:
        t.start()
    time.sleep(2.0)
    stop.set()
    for t in threads:
        t.join(30)
    grown = rss_kb(os.getpid()) - before
    ran_during = len(c.ledger.completed())
    c.start_worker()  # not limited: drains the backlog
    began = time.time()
    await_(lambda: c.all_done(sent), 60)
    drain = time.time() - began
    lost, dups, _ = c.tally(sent)
    record(
        lost=lost,
        duplicated=dups,
        allowed=0,
        recover=drain,
        detail=f"{len(sent)} published in 2 s ({len(sent) / 2:.0f}/s, {failed[0]} raised) to a "
        f"worker limited to 100/s ({ran_during} ran meanwhile); producer RSS "
        f"{grown / 1024:+.1f} MB; a second worker drained the rest",
    )
    assert lost == 0 and dups == 0
    assert grown < 50 * 1024
