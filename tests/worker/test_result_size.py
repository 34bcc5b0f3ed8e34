"""``result_max_size`` and a backend's ``max_item_size``: a result over the tighter of the two is
stored as a FAILURE raising ResultTooLarge (in-process worker, memory broker and backend)."""

from __future__ import annotations

import re
import threading
from collections.abc import Iterator

import pytest

from celeriac import Celeriac, states
from celeriac.exceptions import ResultTooLarge
from celeriac.settings import Settings
from celeriac.worker import Worker


@pytest.fixture(scope="module")
def app() -> Iterator[Celeriac]:
    app = Celeriac("results", broker_url="memory://", result_max_size=1000)

    @app.task(name="text")
    def text(n: int) -> str:
        return "x" * n

    @app.task(name="fail")
    def fail(n: int) -> None:
        raise ValueError("y" * n)

    worker = Worker(app, pool="threads", concurrency=2, install_signal_handlers=False)
    thread = threading.Thread(target=worker.start, daemon=True)
    thread.start()
    assert worker.ready.wait(10)
    try:
        yield app
    finally:
        worker.stop()
        thread.join(10)


def test_default_is_16_mib() -> None:
    assert Settings().result_max_size == 16 * 1024 * 1024


def test_a_result_that_fits_is_stored(app: Celeriac) -> None:
    assert app.tasks["text"].delay(500).get(timeout=10) == "x" * 500


def test_a_result_over_result_max_size_is_stored_as_failure(app: Celeriac) -> None:
    result = app.tasks["text"].delay(2000)
    with pytest.raises(ResultTooLarge) as info:
        result.get(timeout=10)
    assert result.state == states.FAILURE
    # 2,000 x's plus the document around them (its date_done drops zero microseconds)
    assert re.fullmatch(
        f"the SUCCESS result of task {result.id} encodes to 21[0-9][0-9] bytes, over "
        "result_max_size=1000",
        str(info.value),
    )


def test_a_failure_too_large_to_store_keeps_its_state_with_the_size_error(app: Celeriac) -> None:
    result = app.tasks["fail"].delay(5000)
    with pytest.raises(ResultTooLarge, match=r"the FAILURE result of task .* over result_max_"):
        result.get(timeout=10)
    assert result.state == states.FAILURE


def test_the_backends_own_item_limit_applies_when_it_is_lower(app: Celeriac) -> None:
    backend = app.backend
    backend.max_item_size = 600  # the hook a store with a limit sets (memcached: 1 MB)
    try:
        result = app.tasks["text"].delay(800)
        with pytest.raises(
            ResultTooLarge, match=r"encodes to \d+ bytes, over the memory:// backend's item limit"
        ):
            result.get(timeout=10)
        assert app.tasks["text"].delay(400).get(timeout=10) == "x" * 400
    finally:
        del backend.max_item_size
