"""A real worker process on an SQLite broker with results in a private memcached: a group, a
chord, an oversize result, and a memcached restart under the running worker."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from celeriac import chord, group
from celeriac.exceptions import ResultTooLarge, TimeoutError
from celeriac.result import AsyncResult, GroupResult
from tests.memcached_support import MemcachedServer

from .conftest import Env

pytestmark = [pytest.mark.e2e, pytest.mark.memcached]


@pytest.fixture
def env(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, private_memcached: MemcachedServer
) -> Iterator[tuple[Env, object]]:
    env = Env(tmp_path)
    env.env["CELERIAC_RESULT_BACKEND"] = private_memcached.url
    monkeypatch.syspath_prepend(str(Path(__file__).parent))
    import e2e_tasks

    e2e_tasks.app.conf.update(broker_url=env.url, result_backend=private_memcached.url)
    e2e_tasks.app.close()
    try:
        yield env, e2e_tasks
    finally:
        env.close()
        e2e_tasks.app.close()


def test_groups_chords_limits_and_a_restart_with_memcached_results(
    env: tuple[Env, object], private_memcached: MemcachedServer
) -> None:
    e2e, tasks = env
    worker = e2e.start_worker("-c", "2")
    app = tasks.app  # type: ignore[attr-defined]
    add, tsum = tasks.add, tasks.tsum  # type: ignore[attr-defined]

    # a group, saved and restored
    res = group(add.s(i, i) for i in range(10))()
    res.save()
    restored = GroupResult.restore(res.id, app)
    assert restored is not None
    assert restored.get(timeout=20) == [2 * i for i in range(10)]

    # a chord: its body runs once, with every header result
    result = chord(add.s(i, 1) for i in range(30))(tsum.s())
    assert result.get(timeout=30) == sum(i + 1 for i in range(30))
    assert sum(e2e.ledger_entries("body").values()) == 1

    # over memcached's 1 MiB item (less the reserve): a FAILURE raising ResultTooLarge
    big = add.delay("x" * 600_000, "y" * 600_000)
    with pytest.raises(ResultTooLarge, match="memcached:// backend's item limit"):
        big.get(timeout=20)

    # memcached restarts: the stored result is gone and reads as PENDING (an AsyncResult that
    # already returned it keeps it); the task does not run again, and the worker stores the
    # next results without being restarted.
    done = add.delay(2, 2)
    assert done.get(timeout=20) == 4
    private_memcached.restart()
    assert done.get(timeout=0.5) == 4
    again = AsyncResult(done.id, app)
    assert again.state == "PENDING"
    with pytest.raises(TimeoutError):
        again.get(timeout=0.5)
    assert add.delay(3, 3).get(timeout=20) == 6
    assert e2e.ledger_entries("run")[done.id] == 1
    assert worker.poll() is None
