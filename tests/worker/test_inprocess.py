"""Worker behaviour checked in-process: threads pool over the memory broker and backend."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import pytest

from celeriac import Celeriac, signals, states
from celeriac.worker import Worker


@pytest.fixture
def app() -> Iterator[Celeriac]:
    app = Celeriac("inproc", broker_url="memory://", task_track_started=True)

    @app.task(name="slow")
    def slow(seconds: float) -> float:
        time.sleep(seconds)
        return seconds

    @app.task(name="boom")
    def boom() -> None:
        raise KeyError("k")

    worker = Worker(app, pool="threads", concurrency=2, install_signal_handlers=False)
    thread = threading.Thread(target=worker.start, daemon=True)
    thread.start()
    assert worker.ready.wait(10)
    try:
        yield app
    finally:
        worker.stop()
        thread.join(10)


def wait_state(result, state: str, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while result.state != state:
        assert time.monotonic() < deadline, f"state stayed {result.state}, wanted {state}"
        time.sleep(0.01)


def test_track_started_stores_started_with_pid_and_hostname(app):
    result = app.tasks["slow"].delay(0.5)
    wait_state(result, states.STARTED)
    assert set(result.info) == {"pid", "hostname"}
    assert result.get(timeout=5) == 0.5


def test_signals_fire_in_order_for_success_and_failure(app):
    seen: list[tuple[str, str]] = []

    def receiver(name: str):
        def record(sender, **kwargs):
            seen.append((name, sender.name))

        return record

    hooks = {
        sig: receiver(sig.name)
        for sig in (
            signals.task_prerun,
            signals.task_success,
            signals.task_failure,
            signals.task_postrun,
        )
    }
    for sig, fn in hooks.items():
        sig.connect(fn)
    try:
        app.tasks["slow"].delay(0).get(timeout=5)
        with pytest.raises(KeyError):
            app.tasks["boom"].delay().get(timeout=5)
    finally:
        for sig, fn in hooks.items():
            sig.disconnect(fn)
    assert seen == [
        ("task_prerun", "slow"),
        ("task_success", "slow"),
        ("task_postrun", "slow"),
        ("task_prerun", "boom"),
        ("task_failure", "boom"),
        ("task_postrun", "boom"),
    ]


def test_a_raising_signal_receiver_does_not_fail_the_task(app):
    def bad(sender, **kwargs):
        raise RuntimeError("receiver bug")

    signals.task_prerun.connect(bad)
    try:
        assert app.tasks["slow"].delay(0).get(timeout=5) == 0
    finally:
        signals.task_prerun.disconnect(bad)


def test_a_result_the_next_chain_step_cannot_carry_fails_clearly(app):
    @app.task(name="opaque")
    def opaque() -> object:
        return object()  # not JSON: it cannot be sent on to the next step

    result = (opaque.s() | app.tasks["slow"].s()).apply_async()
    first = result.parent
    with pytest.raises(TypeError, match="not JSON serializable"):
        first.get(timeout=5)
    # The result is stored before the message is set aside: wait for the dead letter.
    deadline = time.monotonic() + 5
    while not app.broker.dead_letters() and time.monotonic() < deadline:
        time.sleep(0.01)
    reasons = [d.reason for d in app.broker.dead_letters()]
    assert any("not JSON serializable" in r for r in reasons), reasons


def test_async_client_api_sends_and_waits_without_blocking_the_loop(app):
    import asyncio

    slow = app.tasks["slow"]

    async def main() -> tuple[list[float], int]:
        ticks = 0

        async def ticker() -> None:
            nonlocal ticks
            while True:
                await asyncio.sleep(0.01)
                ticks += 1

        tick = asyncio.create_task(ticker())
        results = [await slow.adelay(0.3), await slow.aapply_async((0.3,))]
        values = await asyncio.gather(*(r.aget(timeout=5) for r in results))
        tick.cancel()
        return values, ticks

    values, ticks = asyncio.run(main())
    assert values == [0.3, 0.3]
    assert ticks >= 15  # the loop kept running while results were awaited


def test_aget_times_out(app):
    import asyncio

    from celeriac import TimeoutError as CeleriacTimeout

    result = app.tasks["slow"].delay(2)
    with pytest.raises(CeleriacTimeout):
        asyncio.run(result.aget(timeout=0.2))
