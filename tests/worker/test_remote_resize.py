"""pool_grow/pool_shrink answered by in-process workers (memory broker): the threads pool grows
and shrinks within its bounds; solo and asyncio refuse with a typed reply."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator

import pytest

from celeriac import Celeriac
from celeriac.control.mailbox import Command
from celeriac.worker import Worker
from celeriac.worker.remote import dispatch
from celeriac.worker.remote_views import LocalView


def _app() -> Celeriac:
    app = Celeriac("resize", broker_url="memory://")

    @app.task(name="span")
    def span(seconds: float) -> list[float]:
        start = time.time()
        time.sleep(seconds)
        return [start, time.time()]

    return app


@pytest.fixture
def started() -> Iterator[Callable[..., tuple[Celeriac, LocalView]]]:
    workers: list[tuple[Worker, threading.Thread]] = []

    def start(pool: str, concurrency: int = 1) -> tuple[Celeriac, LocalView]:
        app = _app()
        worker = Worker(app, pool=pool, concurrency=concurrency, install_signal_handlers=False)
        thread = threading.Thread(target=worker.start, daemon=True)
        thread.start()
        assert worker.ready.wait(10)
        workers.append((worker, thread))
        return app, LocalView(worker)

    yield start
    for worker, thread in workers:
        worker.stop()
        thread.join(10)


def ask(view: LocalView, method: str, **arguments: object) -> object:
    return dispatch(view, Command(method, dict(arguments), "ticket"))


def test_threads_pool_grows_and_shrinks(started):
    app, view = started("threads", 1)
    assert ask(view, "pool_grow", n=1) == {"ok": "pool will grow"}
    assert view.stats()["pool"]["max-concurrency"] == 2
    assert view.stats()["prefetch_count"] == 8  # 4 per slot (the default multiplier)
    a, b = (app.tasks["span"].delay(0.4) for _ in range(2))
    (sa, ea), (sb, eb) = a.get(timeout=5), b.get(timeout=5)
    assert sb < ea and sa < eb  # both ran at once
    assert ask(view, "pool_shrink", n=1) == {"ok": "pool will shrink"}
    assert view.stats()["pool"]["max-concurrency"] == 1
    assert ask(view, "pool_shrink", n=1) == {
        "error": f"pool_shrink: {view.hostname} runs 1; a pool keeps at least 1",
        "unsupported": True,
    }
    assert ask(view, "pool_grow", n=4) == {
        "error": f"pool_grow: {view.hostname} runs 1 and may grow to 4 at most "
        "(worker_max_pool_size)",
        "unsupported": True,
    }


@pytest.mark.parametrize("pool", ["solo", "asyncio"])
def test_solo_and_asyncio_refuse_to_resize(started, pool):
    _, view = started(pool)
    assert ask(view, "pool_grow", n=1) == {
        "error": f"pool_grow: the {pool} pool of {view.hostname} has a fixed size "
        "(restart it with another -c)",
        "unsupported": True,
    }
