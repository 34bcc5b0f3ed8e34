"""Lease ahead, give back when it matters: a worker leases several messages per slot, but what
waits behind a task running longer than ``worker_fair_after`` goes back to the broker."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import pytest

from celeriac import Celeriac
from celeriac.worker import Worker, inflight
from celeriac.worker.inflight import InFlight

DURATION = 0.4


@pytest.fixture
def app() -> Iterator[Celeriac]:
    app = Celeriac("fairness", broker_url="memory://")
    yield app
    app.close()


def run_workers(app: Celeriac, count: int, **options: object) -> list[Worker]:
    workers = [
        Worker(app, pool="solo", concurrency=1, install_signal_handlers=False, **options)
        for _ in range(count)
    ]
    for w in workers:
        threading.Thread(target=w.start, daemon=True).start()
        assert w.ready.wait(10)
    return workers


def test_two_solo_workers_share_four_tasks_two_each(app: Celeriac) -> None:
    """Queued before either worker starts: the first leases all four (multiplier 4) and gives
    three back once its task ran 0.1 s, so the two run two each, in two rounds, not four."""
    ran_by: list[str] = []

    @app.task
    def slow(i: int) -> int:
        ran_by.append(threading.current_thread().name)
        time.sleep(DURATION)
        return i

    results = [slow.delay(i) for i in range(4)]
    started = time.monotonic()
    workers = run_workers(app, 2)
    try:
        assert [r.get(timeout=10) for r in results] == [0, 1, 2, 3]
        elapsed = time.monotonic() - started
    finally:
        for w in workers:
            w.stop()
    assert workers[0].prefetch == 4
    assert sorted(ran_by.count(name) for name in set(ran_by)) == [2, 2]
    assert elapsed < 3 * DURATION


def test_prefetched_messages_behind_a_long_task_run_elsewhere_uncharged(app: Celeriac) -> None:
    runs: dict[str, tuple[str, float, int]] = {}

    @app.task(bind=True)
    def rec(self: object, name: str, seconds: float) -> None:
        request = self.request  # type: ignore[attr-defined]
        runs[name] = (threading.current_thread().name, time.monotonic(), request.delivery_count)
        time.sleep(seconds)

    long = rec.delay("long", 1.5)
    short = [rec.delay(f"s{i}", 0.0) for i in range(3)]
    first = run_workers(app, 1)  # leases all four, runs the long one
    second = run_workers(app, 1)
    try:
        for r in short:
            r.get(timeout=10)
        long.get(timeout=10)
    finally:
        for w in first + second:
            w.stop()
    long_thread, long_start, _ = runs["long"]
    assert [runs[f"s{i}"][0] != long_thread for i in range(3)] == [True] * 3
    assert [runs[f"s{i}"][2] for i in range(3)] == [1, 1, 1]  # no delivery charged
    assert first[0].consumer.fair is not None
    assert first[0].consumer.fair.returned == 3
    # 0.1 s, one check, a fetch by the idle worker and slack for a loaded machine.
    assert max(runs[f"s{i}"][1] for i in range(3)) - long_start < 0.8


def test_tasks_acked_on_receipt_behind_a_long_task_still_run(app: Celeriac) -> None:
    # Their messages are gone once received (acks_late=False): nothing to give back, so
    # they wait for the long task and run here rather than vanish.
    ran: list[str] = []

    @app.task(acks_late=False)
    def early(name: str, seconds: float) -> str:
        time.sleep(seconds)
        ran.append(name)
        return name

    results = [early.delay("long", 0.6), *(early.delay(f"s{i}", 0.0) for i in range(3))]
    workers = run_workers(app, 1)
    try:
        assert [r.get(timeout=10) for r in results] == ["long", "s0", "s1", "s2"]
    finally:
        workers[0].stop()
    assert sorted(ran) == ["long", "s0", "s1", "s2"]
    assert workers[0].consumer.fair is not None
    assert workers[0].consumer.fair.returned == 0  # none given back to the broker


@pytest.mark.parametrize(
    ("fair_after", "seconds", "growth", "batches"),
    [
        (0.1, 0.0, 4, [4, 16]),
        (0.1, 0.005, 4, [4] * 5),
        (0.1, 0.0, 1, [4] * 5),
        (None, 0.0, 4, [4] * 5),
        (0.0, 0.0, 4, [1] * 20),
    ],
)
def test_short_tasks_are_leased_in_batches(
    app: Celeriac,
    monkeypatch: pytest.MonkeyPatch,
    fair_after: float | None,
    seconds: float,
    growth: int,
    batches: list[int],
) -> None:
    """Each fetch that brought messages, by size: 20 queued tasks on a solo worker. By default
    the first fetch takes 4 (``worker_prefetch_multiplier``); once the tasks are seen to run
    in well under LEASE_AHEAD (4 ms) the window grows to 16 and one more fetch takes the rest,
    where 5 ms tasks keep batches of 4. The window stays fixed with ``worker_prefetch_growth =
    1`` and without giving back (``None``), and ``worker_fair_after = 0`` leases only what
    runs: 20 fetches of 1."""
    app.conf.worker_fair_after = fair_after
    app.conf.worker_prefetch_growth = growth
    if not seconds:
        # A no-op's run time on a loaded machine may reach a fraction of a millisecond: the
        # window is sized against a second, so that any no-op is short enough for 16.
        monkeypatch.setattr(inflight, "LEASE_AHEAD", 1.0)
    sizes: list[int] = []
    add = InFlight.add

    def counting_add(self: InFlight, deliveries: list[object]) -> object:
        if deliveries:
            sizes.append(len(deliveries))
        return add(self, deliveries)  # type: ignore[arg-type]

    monkeypatch.setattr(InFlight, "add", counting_add)

    @app.task
    def noop(i: int) -> int:
        time.sleep(seconds)
        return i

    results = [noop.delay(i) for i in range(20)]
    workers = run_workers(app, 1)
    try:
        assert [r.get(timeout=10) for r in results] == list(range(20))
    finally:
        workers[0].stop()
    assert sizes == batches


def test_a_window_that_shrinks_by_half_releases_what_the_broker_sent_ahead(
    app: Celeriac, monkeypatch: pytest.MonkeyPatch
) -> None:
    """RabbitMQ keeps sending up to the prefetch a consumer subscribed with: once the window
    stays at half its largest or less (for SETTLE), the consumer is released
    (``stop_consuming``: what was sent and not fetched goes back) and the next fetch subscribes
    with the new room. Once, not per task."""
    monkeypatch.setattr(inflight, "LEASE_AHEAD", 0.02)  # no-ops: 16 a slot; 30 ms tasks: 4
    monkeypatch.setattr(inflight, "SETTLE", 0.05)  # the window stays low for 2 tasks of 30 ms
    released: list[list[str]] = []
    broker = type(app.broker)
    stop = broker.stop_consuming

    def counted(self: object, queues: list[str]) -> None:
        released.append(list(queues))
        stop(self, queues)  # type: ignore[arg-type]

    monkeypatch.setattr(broker, "stop_consuming", counted)

    @app.task
    def work(seconds: float) -> float:
        time.sleep(seconds)
        return seconds

    results = [work.delay(0.0) for _ in range(20)] + [work.delay(0.03) for _ in range(5)]
    workers = run_workers(app, 1)
    try:
        assert [r.get(timeout=10) for r in results] == [0.0] * 20 + [0.03] * 5
        window = workers[0].consumer.inflight.prefetch
    finally:
        workers[0].stop()
    assert window == 4
    assert released == [["celery"]]


def test_without_giving_back_a_worker_runs_what_it_prefetched(app: Celeriac) -> None:
    """The opt-out (``worker_fair_after = None``): the first worker to fetch leases all four
    and runs them one after another while the other one idles."""
    app.conf.worker_fair_after = None
    ran_by: list[str] = []

    @app.task
    def slow(i: int) -> int:
        ran_by.append(threading.current_thread().name)
        time.sleep(DURATION / 2)
        return i

    results = [slow.delay(i) for i in range(4)]
    first = run_workers(app, 1)  # its first fetch leases all four
    second = run_workers(app, 1)
    try:
        assert [r.get(timeout=10) for r in results] == [0, 1, 2, 3]
    finally:
        for w in first + second:
            w.stop()
    assert len(set(ran_by)) == 1
