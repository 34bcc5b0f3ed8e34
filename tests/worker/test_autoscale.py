"""``--autoscale``: Celery's rules as a pure function, and a threads worker (memory broker) that
grows to MAX while work waits and shrinks back to MIN once it stops."""

from __future__ import annotations

import threading
import time

import pytest

from celeriac import Celeriac
from celeriac.control.mailbox import Command
from celeriac.exceptions import ConfigurationError
from celeriac.worker import Worker
from celeriac.worker.autoscale import Bounds, decide, parse
from celeriac.worker.remote import dispatch
from celeriac.worker.remote_views import LocalView

B = Bounds(max=5, min=2, keepalive=30.0)


@pytest.mark.parametrize(
    ("size", "qty", "quiet", "change"),
    [
        (2, 4, 0.0, 2),  # more work than processes: grow to it...
        (2, 9, 0.0, 3),  # ...up to MAX
        (5, 9, 99.0, 0),
        (5, 3, 29.0, 0),  # less work, but new work came within the keepalive
        (5, 3, 31.0, -2),  # quiet for longer: shrink to the work...
        (5, 0, 31.0, -3),  # ...down to MIN
        (2, 0, 99.0, 0),
        (3, 3, 99.0, 0),
    ],
)
def test_decide_follows_celerys_rules(size: int, qty: int, quiet: float, change: int) -> None:
    assert decide(size, qty, B, quiet) == change


def test_parse_and_bounds() -> None:
    assert (parse("10,3"), parse(" 4 , 0 "), parse("7")) == ((10, 3), (4, 1), (7, 1))
    for bad in ("x", "1,2,3", ""):
        with pytest.raises(ConfigurationError, match="expected MAX,MIN"):
            parse(bad)
    with pytest.raises(ConfigurationError, match=r"--autoscale 2,3: MAX,MIN needs 1 <= MIN <= MAX"):
        Bounds(2, 3)


@pytest.mark.parametrize("pool", ["solo", "asyncio"])
def test_fixed_pools_refuse_autoscale(pool: str) -> None:
    app = Celeriac("fixed", broker_url="memory://")
    with pytest.raises(ConfigurationError) as err:
        Worker(app, pool=pool, autoscale=(3, 1), install_signal_handlers=False)
    assert str(err.value) == (
        f"--autoscale: the {pool} pool has a fixed size; use --pool prefork or threads"
    )


def test_threads_pool_grows_while_work_waits_and_shrinks_when_idle() -> None:
    app = Celeriac("autoscale-threads", broker_url="memory://")
    app.conf.worker_autoscale_keepalive = 0.5

    @app.task(name="span")
    def span(seconds: float) -> list[float]:
        start = time.time()
        time.sleep(seconds)
        return [start, time.time(), threading.get_ident()]

    worker = Worker(app, pool="threads", autoscale=(3, 1), install_signal_handlers=False)
    thread = threading.Thread(target=worker.start, daemon=True)
    thread.start()
    try:
        assert worker.ready.wait(10)
        view = LocalView(worker)
        assert view.stats()["autoscaler"] == {"max": 3, "min": 1, "current": 1, "qty": 0}
        results = [span.delay(0.5) for _ in range(6)]
        spans = [r.get(timeout=15) for r in results]
        busiest = max(
            len({ident for s, e, ident in spans if s <= start < e}) for start, _, _ in spans
        )
        assert (len({ident for _, _, ident in spans}), busiest) == (3, 3), spans
        deadline = time.monotonic() + 10
        while worker.concurrency != 1 and time.monotonic() < deadline:
            time.sleep(0.05)
        stats = view.stats()
        assert (stats["pool"]["max-concurrency"], stats["prefetch_count"]) == (1, 4)  # 4 per slot
        assert stats["autoscaler"] == {"max": 3, "min": 1, "current": 1, "qty": 0}
        assert dispatch(view, Command("pool_shrink", {"n": 1}, "t")) == {
            "error": "pool_shrink is not supported with autoscale; adjust the autoscale range "
            "instead",
            "unsupported": True,
        }
    finally:
        worker.stop()
        thread.join(10)
