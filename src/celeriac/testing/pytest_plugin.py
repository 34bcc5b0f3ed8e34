"""Celeriac's pytest plugin, loaded by pytest through the ``pytest11`` entry point once
celeriac is installed (Celery's ``celery.contrib.pytest`` in spirit).

Fixtures:

* ``celeriac_config``: settings for the test app (override it in a test module or conftest);
* ``celeriac_app``: an app on the in-process ``memory://`` broker and result store, with its
  own default queue; register tasks on it in the test with ``@celeriac_app.task``;
* ``celeriac_worker``: a worker (threads pool) consuming ``celeriac_app`` in this process, so
  ``.delay(...).get(timeout=...)`` runs the task as a real worker would: arguments serialized
  and decoded, results stored, callbacks, chains and chords sent as messages.

For eager tests (``celeriac_config`` returning ``{"task_always_eager": True}``), calls run
through the same executor and serializer, so an argument production would refuse (not JSON)
raises in the test too.
"""

from __future__ import annotations

import threading
import uuid
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import pytest

from celeriac.app import Celeriac

if TYPE_CHECKING:
    from celeriac.worker.worker import Worker

#: s a worker may take to be ready, or to stop after a test
WORKER_TIMEOUT = 10.0


@pytest.fixture
def celeriac_config() -> dict[str, Any]:
    """Settings for ``celeriac_app``; return your own from a fixture of the same name."""
    return {}


@pytest.fixture
def celeriac_app(celeriac_config: dict[str, Any]) -> Iterator[Celeriac]:
    """An app on the in-process memory broker and result store, closed after the test."""
    settings: dict[str, Any] = {
        "broker_url": "memory://",
        "task_default_queue": f"celeriac-test-{uuid.uuid4().hex[:8]}",
        **celeriac_config,
    }
    app = Celeriac("celeriac.testing", **settings)
    try:
        yield app
    finally:
        app.close()


@pytest.fixture
def celeriac_worker(celeriac_app: Celeriac) -> Iterator[Worker]:
    """A worker (threads pool, two slots) running ``celeriac_app``'s tasks in this process.
    Tasks registered after it starts are found too (it looks tasks up by name per message)."""
    from celeriac.worker.worker import Worker  # only for tests that ask for a worker

    worker = Worker(
        celeriac_app,
        pool="threads",
        concurrency=2,
        install_signal_handlers=False,
        announce=False,
        heartbeat=False,
    )
    thread = threading.Thread(target=worker.start, name="celeriac-test-worker", daemon=True)
    thread.start()
    if not worker.ready.wait(WORKER_TIMEOUT):
        raise RuntimeError(f"the test worker was not ready within {WORKER_TIMEOUT}s")
    try:
        yield worker
    finally:
        worker.stop()
        thread.join(WORKER_TIMEOUT)
