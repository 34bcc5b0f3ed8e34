"""The long scenarios, run on demand: ``pytest -m soak`` (deselected otherwise).

``FAULT_REPEAT`` (default 3; RELIABILITY.md asks for 20) repetitions of the crash scenarios with
seeded random kill times, reported as their worst case; ``FAULT_SOAK_SECONDS`` (default 60;
RELIABILITY.md's 10 min for #18, 24 h for #24) bounds the backpressure and soak loops.
"""

from __future__ import annotations

import contextlib
import os
import random
import threading
import time
from collections import Counter
from pathlib import Path

import pytest

from tests.faults import test_crashes  # its tests, called with a seed (not collected here)
from tests.faults.cluster import await_, rss_kb, wait_for
from tests.faults.matrix import cells
from tests.faults.servers import ReplicaRedis
from tests.redis_support import PrivateRedis

REPEAT = int(os.environ.get("FAULT_REPEAT", "3"))
SOAK_SECONDS = float(os.environ.get("FAULT_SOAK_SECONDS", "60"))
#: Publishes a second at most of the backpressure producer: 30 x the limited worker's 100/s.
MAX_RATE = 3000
#: Seconds between two faults of the soak (RELIABILITY.md: 10 min over 24 h).
SOAK_EVERY = float(os.environ.get("FAULT_SOAK_EVERY", "5"))

pytestmark = pytest.mark.timeout(max(600, 3 * SOAK_SECONDS + 300))


@cells("kill_worker_repeated")
@pytest.mark.parametrize("seed", range(REPEAT))
def test_kill_worker_repeated(cluster, broker, record, seed):
    test_crashes.test_kill_worker_mid_task(cluster, broker, record, seed=seed)


@cells("kill_child_repeated")
@pytest.mark.parametrize("seed", range(REPEAT))
def test_kill_child_repeated(cluster, broker, record, seed):
    test_crashes.test_kill_child_charges_only_its_running_task(cluster, broker, record, seed=seed)


@cells("backpressure_long")
def test_backpressure_at_length(cluster, broker, record):
    c = cluster(broker)
    c.start_worker(env={"FAULT_RATE_LIMIT": "100/s"})
    tasks = c.tasks
    sent: list[str] = []
    failed = [0]
    stop = threading.Event()

    def produce() -> None:
        # As fast as one thread goes, up to 30 x the worker's 100/s (the scenario's bound): at
        # 11,000/s a minute made a backlog two workers could not drain in the time given.
        began = time.monotonic()
        while not stop.is_set():
            try:
                sent.append(tasks.limited.delay().id)
            except Exception:
                failed[0] += 1
            ahead = (len(sent) + failed[0]) / MAX_RATE - (time.monotonic() - began)
            if ahead > 0.01:
                time.sleep(ahead)

    tasks.limited.delay()
    before = rss_kb(os.getpid())
    samples = []
    producer = threading.Thread(target=produce, daemon=True)
    producer.start()
    began = time.time()
    while time.time() - began < SOAK_SECONDS:
        time.sleep(1.0)
        samples.append(rss_kb(os.getpid()) - before)
    stop.set()
    producer.join(60)
    for _ in range(2):
        c.start_worker()
    drained = await_(lambda: c.all_done(sent), 120 + SOAK_SECONDS)
    lost, dups, _ = c.tally(sent)
    record(
        lost=lost,
        duplicated=dups,
        allowed=0,
        detail=f"{SOAK_SECONDS:.0f} s at {len(sent) / SOAK_SECONDS:.0f}/s against 100/s "
        f"({failed[0]} raised); producer RSS at most {max(samples) / 1024:+.1f} MB",
    )
    assert (drained, lost, dups) == (True, 0, 0), f"{len(sent)} sent: {lost} lost, {dups} twice"
    assert max(samples) < 50 * 1024


@cells("failover")
def test_redis_failover_loss_window(cluster, broker, record, tmp_path: Path):
    # A primary and its replica, workers and client through a proxy that moves to the replica.
    c = cluster(broker, vt=2.0, private=True, proxy="both")
    primary: PrivateRedis = c.server  # type: ignore[attr-defined]
    (tmp_path / "replica").mkdir()
    replica = ReplicaRedis(tmp_path / "replica", primary)
    replica.start()
    c.cleanups.append(replica.stop)
    c.backend_url = c.url  # results through the proxy too
    c.reconfigure()
    c.start_worker()
    sent: list[str] = []
    failed = [0]
    stop = threading.Event()

    def produce() -> None:
        while not stop.is_set():
            try:
                sent.append(c.tasks.rec.delay(0.0).id)
            except Exception:  # raised: the caller knows it was not sent
                failed[0] += 1
            time.sleep(0.002)

    producer = threading.Thread(target=produce, daemon=True)
    producer.start()
    time.sleep(random.Random("failover").uniform(2.0, 4.0))
    proxy = c.proxy
    assert proxy is not None
    primary.kill()
    at_failover = len(sent)
    replica.promote()
    proxy.retarget(replica.port)
    proxy.cut()
    failed_over = time.time()
    time.sleep(3.0)
    stop.set()
    producer.join(60)
    after = sent[at_failover:]
    await_(lambda: c.all_done(sent), 60)
    lost, dups, _ = c.tally(sent)
    lost_after = c.tally(after)[0]
    first_after = [r[3] for t in after for r in c.ledger.runs(t) if r[3]]
    record(
        lost=lost,
        duplicated=dups,
        recover=(min(first_after) - failed_over) if first_after else None,
        detail=f"{len(sent)} confirmed ({failed[0]} raised), {lost} of the {at_failover} sent "
        "before the failover "
        "lost (Redis replicates asynchronously; Celeriac does not WAIT)",
    )
    assert lost_after == 0  # the promoted replica serves what was sent to it
    assert first_after, "nothing ran after the failover"


def _fds(pid: int) -> Counter[str]:
    """What ``pid``'s file descriptors point at (a socket, a pipe, a file's path), counted."""
    found: Counter[str] = Counter()
    try:
        names = os.listdir(f"/proc/{pid}/fd")
    except OSError:
        return found
    for name in names:
        with contextlib.suppress(OSError):  # closed meanwhile
            target = os.readlink(f"/proc/{pid}/fd/{name}")
            found[target.split(":[")[0] if ":[" in target else target] += 1
    return found


@cells("soak")
def test_soak(cluster, broker, record):
    c = cluster(broker, vt=2.0, proxy="workers" if broker != "sqlite" else "")
    rnd = random.Random(f"soak-{broker}")
    steady = c.start_worker()  # never killed: its FDs and memory must stay flat
    victim = c.start_worker()
    tasks = c.tasks
    sent: list[str] = []
    stop = threading.Event()
    allowed: set[str] = set()

    def produce() -> None:
        while not stop.is_set():
            sent.append(tasks.rec.delay(rnd.choice([0.0, 0.01, 0.1, 0.5])).id)
            # ~12/s: about half of what two -c 2 workers run of these (0.15 s a task on average:
            # 26/s). At 100/s the backlog of a 60 s soak outlasted the drain window.
            time.sleep(0.08)

    def in_flight() -> set[str]:
        """Started and not yet settled: running, or finished with no SUCCESS stored yet."""
        started, done = c.ledger.started(), c.ledger.completed()
        begun = [t for t in list(sent) if started.get(t)]
        states = c.states(begun)
        return {t for t in begun if not (done.get(t) and states.get(t) == "SUCCESS")}

    def fds() -> Counter[str]:
        return sum((_fds(p) for p in [steady.pid, *steady.children()]), Counter())

    producer = threading.Thread(target=produce, daemon=True)
    producer.start()
    time.sleep(2.0)
    rss0 = rss_kb(steady.pid)
    # The steady worker's FDs before each fault. Its threads open their connections on first
    # use, some late (SQLite, one run: 49 FDs 2 s in, 51 at the first fault, 57 at the end;
    # another: 59 from the first fault on): growth is judged over the run's second half.
    series: list[Counter[str]] = []
    faults: list[str] = []
    began = time.time()
    while time.time() - began < SOAK_SECONDS:
        time.sleep(SOAK_EVERY)
        series.append(fds())
        kinds = ["kill worker", "kill child"] + (["cut"] if c.proxy else [])
        kind = rnd.choice(kinds)
        allowed |= in_flight()
        if kind == "kill worker":
            c.kill(victim)
            victim = c.start_worker()
        elif kind == "kill child":
            children = victim.children()
            if children:
                os.kill(rnd.choice(children), 9)
        else:
            assert c.proxy is not None
            c.proxy.cut()
        faults.append(kind)
    stop.set()
    producer.join(60)
    drained = await_(lambda: c.all_done(sent), 120)
    time.sleep(1.0)
    fds1, rss1 = fds(), rss_kb(steady.pid)
    fds0 = series[len(series) // 2] if series else fds1
    lost, dups, counts = c.tally(sent)
    extra = {t for t, n in counts.items() if n > 1} - allowed
    record(
        lost=lost,
        duplicated=dups,
        allowed=len(allowed),
        detail=f"{SOAK_SECONDS:.0f} s, {len(sent)} tasks, {len(faults)} faults "
        f"({', '.join(sorted(set(faults)))}); run twice outside the faults: {len(extra)}; "
        f"steady worker's FDs {fds0.total()} (half-way) -> {fds1.total()}, RSS "
        f"{rss0 // 1024} -> {rss1 // 1024} MB",
    )
    missing = sorted(t for t, n in counts.items() if n == 0)
    assert (drained, lost) == (True, 0), (
        f"{len(sent)} sent, {len(faults)} faults ({', '.join(faults)}): {lost} never ran, "
        f"e.g. {missing[:5]}"
    )
    assert dups <= len(allowed)  # RELIABILITY.md's bound; `extra` is reported, not asserted
    assert fds1.total() <= fds0.total() + 5, (
        f"FDs added over the second half: {dict(fds1 - fds0)}; "
        f"at each fault: {[c.total() for c in series]}"
    )
    wait_for(lambda: steady.alive(), 1, "the steady worker alive")
