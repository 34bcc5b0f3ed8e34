"""A PostgreSQL restart during a stream of tasks: the workers reconnect on their own and no
task whose publish was confirmed is lost."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from celeriac.exceptions import BrokerError
from tests.postgres_support import PrivatePostgres

from .conftest import HERE, wait_for
from .pg_env import PgEnv

pytestmark = [pytest.mark.postgres, pytest.mark.e2e]


@pytest.fixture
def server() -> Iterator[PrivatePostgres]:
    pg = PrivatePostgres()
    try:
        pg.init()
        pg.start()
        yield pg
    finally:
        pg.close()


class Stream:
    """Sends a task every few ms from a thread; remembers the ids whose publish returned."""

    def __init__(self, tasks: Any, queue: str) -> None:
        self.tasks, self.queue = tasks, queue
        self.confirmed: list[str] = []
        self.refused = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        i = 0
        while not self._stop.wait(0.005):
            i += 1
            try:
                result = self.tasks.add.apply_async((i, 1), queue=self.queue)
            except BrokerError:
                self.refused += 1  # the server is down: not confirmed, so not owed
                continue
            self.confirmed.append(result.id)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(10)


def test_workers_reconnect_after_a_restart_and_nothing_confirmed_is_lost(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, server: PrivatePostgres
) -> None:
    env = PgEnv(tmp_path, url=f"{server.url}?schema=celeriac")
    monkeypatch.setenv("E2E_LEDGER", str(env.ledger))
    monkeypatch.syspath_prepend(str(HERE))
    import e2e_tasks

    e2e_tasks.app.conf.update(broker_url=env.url, result_backend=env.url)
    e2e_tasks.app.close()
    queue = "restart"
    try:
        workers = [
            env.start_worker("-c", "2", "-P", "prefork", "-Q", queue, "-l", "warning"),
            env.start_worker("-c", "2", "-P", "threads", "-Q", queue, "-l", "warning"),
        ]
        stream = Stream(e2e_tasks, queue)
        wait_for(lambda: len(stream.confirmed) >= 100, 20, "100 tasks sent before the restart")
        server.stop()
        down_at = len(stream.confirmed)
        time.sleep(1.0)  # the server is down for a while: every worker's next call fails
        server.start()
        wait_for(lambda: len(stream.confirmed) >= down_at + 100, 30, "100 more after it")
        stream.stop()
        ids = list(stream.confirmed)
        backend = e2e_tasks.app.backend

        def all_succeeded() -> bool:
            return set(backend.get_states(ids).values()) == {"SUCCESS"} and len(
                backend.get_states(ids)
            ) == len(ids)

        wait_for(all_succeeded, 60, "every confirmed task to succeed")
        assert stream.refused > 0  # the stream did see the server go away
        assert [w.poll() for w in workers] == [None, None]  # the same processes, not restarted
        ran = env.ledger_entries("run")
        assert set(ids) <= set(ran)
    finally:
        e2e_tasks.app.close()
        for proc in env.workers:
            if proc.poll() is None:
                proc.kill()
                proc.wait(10)
