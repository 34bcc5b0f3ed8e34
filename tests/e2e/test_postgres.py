"""End to end on PostgreSQL: real worker processes, broker and results in one schema."""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import service_url

from .conftest import HERE, ledger_records, wait_for
from .pg_env import PgEnv

pytestmark = [pytest.mark.postgres, pytest.mark.e2e]

#: several messages per claim (their results ride on the next claim), no line per task
FAST = ("--prefetch-multiplier", "8", "-l", "warning")


@pytest.fixture
def pg(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[PgEnv, Any]]:
    """A schema of its own for broker and results, and the tasks module bound to it here."""
    env = PgEnv(tmp_path)
    monkeypatch.setenv("E2E_LEDGER", str(env.ledger))
    monkeypatch.syspath_prepend(str(HERE))
    import e2e_tasks

    e2e_tasks.app.conf.update(broker_url=env.url, result_backend=env.url)
    e2e_tasks.app.close()
    try:
        yield env, e2e_tasks
    finally:
        e2e_tasks.app.close()
        env.close()


def _group_pids(pgid: int) -> set[int]:
    """The processes of a process group (a worker and its prefork children)."""
    out = set()
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == pgid:
            out.add(int(stat.parent.name))
    return out


def _states(app: Any, ids: list[str]) -> dict[str, str]:
    return app.backend.get_states(ids)


def test_10000_tasks_two_workers_one_killed_nothing_lost_no_success_rerun(
    pg: tuple[PgEnv, Any],
) -> None:
    env, tasks = pg
    env.set_vt(6)  # the killed worker's leases lapse 6 s after their last renewal
    queue = f"pg-{env.schema}"
    workers = [env.start_worker("-c", "4", "-P", "prefork", "-Q", queue, *FAST)]
    workers.append(env.start_worker("-c", "4", "-P", "prefork", "-Q", queue, *FAST))
    app = tasks.app
    n = 10_000
    pubs = [app.prepare_message("e2e_tasks.add", (i, 1), queue=queue) for i in range(n)]
    for i in range(0, n, 1000):
        app.broker.publish_many(pubs[i : i + 1000])
    ids = [str(p.message.task_id) for p in pubs]

    def succeeded() -> int:
        return sum(1 for s in _states(app, ids).values() if s == "SUCCESS")

    wait_for(lambda: succeeded() >= n // 3, 60, "a third of the tasks to succeed")
    victim = workers[0]
    killed_pids = _group_pids(victim.pid)
    env.kill_group(victim)
    # Every SUCCESS the dead worker stored is in this snapshot; the survivor's runs after it
    # must not include any of them (its own runs until then may be in it: they ran first).
    stored_before_kill = {t for t, s in _states(app, ids).items() if s == "SUCCESS"}
    snapshot_at = time.time()

    wait_for(lambda: succeeded() == n, 90, "every task to succeed")
    states = _states(app, ids)
    assert Counter(states.values()) == {"SUCCESS": n}
    assert [app.AsyncResult(ids[k]).get(timeout=5) for k in (0, n // 2, n - 1)] == [
        1,
        n // 2 + 1,
        n,
    ]
    runs: Counter[str] = Counter()
    late: list[str] = []
    by_killed: set[str] = set()
    for path, (kind, task_id, at) in ledger_records(env.ledger):
        assert kind == "run"
        runs[task_id] += 1
        if int(path.stem) in killed_pids:
            by_killed.add(task_id)
        if float(at) > snapshot_at and task_id in stored_before_kill:
            late.append(task_id)
    assert set(runs) == set(ids)  # nothing lost
    assert late == []  # no task whose SUCCESS was stored ran again
    again = {t for t, k in runs.items() if k > 1}
    # Only tasks the killed worker held and had not finished ran twice, and only twice.
    # Exactly the tasks the dead worker ran and had not stored ran twice, and only twice.
    assert again == by_killed - stored_before_kill
    assert max(runs.values()) <= 2
    assert len(stored_before_kill) >= n // 3
    assert workers[1].poll() is None


def test_transactional_enqueue_rolled_back_sends_nothing_committed_runs(
    pg: tuple[PgEnv, Any],
) -> None:
    import psycopg

    env, tasks = pg
    queue = f"pg-tx-{env.schema}"
    env.start_worker("-c", "1", "-P", "threads", "-Q", queue)
    conninfo = service_url("postgres")
    with psycopg.connect(conninfo) as conn:
        lost = tasks.add.apply_async((1, 1), queue=queue, transaction=conn)
        conn.rollback()
        kept = tasks.add.apply_async((2, 2), queue=queue, transaction=conn)
        # Not sent until the commit: the worker cannot see it yet.
        assert tasks.app.broker.depth(queue) == 0
        conn.commit()
    assert kept.get(timeout=10) == 4
    wait_for(lambda: tasks.app.broker.depth(queue) == 0, 10, "the message to be acknowledged")
    assert lost.state == "PENDING"
    assert env.ledger_entries("run") == {kept.id: 1}
