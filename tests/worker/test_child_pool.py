"""The prefork child's pool, driven in-process: tasks on the calling (main) thread, retirement
after ``max_tasks_per_child``, revoked jobs skipped, unstarted jobs handed back on stop.

Ending the process (hard time limit, terminate) is covered end to end in
tests/e2e/test_worker_engine.py, since it calls ``os._exit``.
"""

from __future__ import annotations

import threading

import pytest

from celeriac import Celeriac, states
from celeriac.worker.executor import precheck
from celeriac.worker.job import Job, Outcome
from celeriac.worker.pools.child import ChildPool


@pytest.fixture
def app() -> Celeriac:
    app = Celeriac("childpool", broker_url="memory://")

    @app.task(name="where")
    def where(i: int) -> list[int]:
        return [i, threading.get_ident()]

    return app


def jobs(app: Celeriac, n: int) -> list[Job]:
    for i in range(n):
        app.tasks["where"].delay(i)
    out = []
    for i, d in enumerate(app.broker.fetch(["celery"], n, timeout=1)):
        headers, refused = precheck(app, i, d, None)
        assert refused is None and headers is not None
        out.append(Job(i, d.message, headers, d.queue, d.delivery_count, "node"))
    assert len(out) == n
    return out


def test_runs_jobs_in_order_on_the_serving_thread_and_retires_after_max_tasks(app):
    outcomes: list[Outcome] = []
    retired = threading.Event()
    pool = ChildPool(app, 1, outcomes.append, max_tasks_per_child=3)
    pool.on_retire = retired.set
    pool.start()
    for job in jobs(app, 5):
        pool.submit(job)
    pool.serve()  # returns by itself once the child has run its 3 tasks

    assert retired.is_set()
    assert [o.state for o in outcomes] == [states.SUCCESS] * 3
    ran_on = {app.backend.decode_meta(o.meta)["result"][1] for o in outcomes if o.meta}
    assert ran_on == {threading.get_ident()}, "tasks must run on the serving thread"
    assert [j.job_id for j in pool.stop()] == [3, 4]  # never started: handed back


def test_a_revoked_job_is_reported_revoked_without_running(app):
    outcomes: list[Outcome] = []
    pool = ChildPool(app, 1, outcomes.append)
    pool.start()
    first, second = jobs(app, 2)
    pool.revoke(first.headers.id)
    pool.submit(first)
    pool.submit(second)
    stopper = threading.Timer(0.2, pool.stop)
    stopper.start()
    pool.serve()
    stopper.join()
    # Not run: acknowledged, and the REVOKED state already stored is left as it is.
    assert [(o.task_id, o.state, o.summary) for o in outcomes] == [
        (first.headers.id, None, "revoked before it started"),
        (second.headers.id, states.SUCCESS, outcomes[1].summary),
    ]


def test_a_child_over_its_memory_limit_retires(app):
    pool = ChildPool(app, 1, lambda o: None, max_memory_per_child=1)  # 1 KiB: always over
    retired = threading.Event()
    pool.on_retire = retired.set
    pool.start()
    for job in jobs(app, 2):
        pool.submit(job)
    pool.serve()
    assert retired.is_set()
    assert len(pool.stop()) == 1
