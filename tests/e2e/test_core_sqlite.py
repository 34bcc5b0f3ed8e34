"""Issue #2's end-to-end guarantees, against real `celeriac worker` processes on SQLite."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from contextlib import closing
from pathlib import Path

import pytest

from celeriac import states
from celeriac.exceptions import InvalidTaskArguments, NotRegistered, ProtocolError
from celeriac.protocol.message import Message, build_task_message
from celeriac.protocol.publication import Publication, Route
from celeriac.protocol.serializers import default_registry

from .conftest import wait_for

pytestmark = pytest.mark.e2e

CLIENT = """
import sys, json
import e2e_tasks
start, count = int(sys.argv[1]), int(sys.argv[2])
ids = [e2e_tasks.add.delay(i, i).id for i in range(start, start + count)]
print(json.dumps(ids))
"""


def test_10k_tasks_two_clients_two_workers_each_once(e2e):
    env, tasks = e2e
    env.start_worker("-c", "2")
    env.start_worker("-c", "2")
    clients = [
        subprocess.Popen(
            [sys.executable, "-c", CLIENT, str(start), "5000"],
            env=env.env,
            stdout=subprocess.PIPE,
            cwd=env.tmp,
        )
        for start in (0, 5000)
    ]
    ids: list[tuple[int, str]] = []
    for start, client in zip((0, 5000), clients, strict=True):
        out, _ = client.communicate(timeout=120)
        assert client.returncode == 0
        ids += list(enumerate(json.loads(out), start))
    assert len({tid for _, tid in ids}) == 10_000

    for i, tid in ids:
        assert tasks.app.AsyncResult(tid).get(timeout=120) == 2 * i
    runs = env.ledger_entries("run")
    assert set(runs) == {tid for _, tid in ids}
    assert max(runs.values()) == 1, "a task ran twice"
    # Results are stored before their messages are acknowledged: the last acks may lag a little.
    wait_for(lambda: tasks.app.broker.depth("celery") == 0, 10, "every message acknowledged")


def test_sigkill_mid_task_is_run_again_after_the_lease(e2e):
    env, tasks = e2e
    env.set_vt(2)
    first = env.start_worker("-c", "1")
    result = tasks.sleepy.delay(5)
    wait_for(lambda: env.ledger_entries("start")[result.id] == 1, 10, "the task to start")
    os.kill(first.pid, signal.SIGKILL)
    first.wait(5)
    killed_at = time.time()
    env.start_worker("-c", "1")
    assert result.get(timeout=30) == 5
    # Run again only after the lease (2 s) ran out, to completion, exactly once more.
    assert env.ledger_entries("start")[result.id] == 2
    assert env.ledger_entries("end")[result.id] == 1
    assert time.time() - killed_at >= 5


def test_countdown_is_held_by_the_broker_and_runs_on_time(e2e):
    env, tasks = e2e
    env.start_worker("-c", "2")
    sent = time.time()
    result = tasks.stamp.apply_async(countdown=2)
    ran_at = result.get(timeout=10)
    assert 2.0 <= ran_at - sent <= 2.5


def test_expired_task_is_revoked_and_never_runs(e2e):
    env, tasks = e2e
    result = tasks.add.apply_async((1, 2), expires=0.01)
    time.sleep(0.05)
    env.start_worker("-c", "1")
    wait_for(lambda: result.state == states.REVOKED, 10, "REVOKED")
    assert env.ledger_entries("run")[result.id] == 0
    assert "expired" in str(result.info)


@pytest.mark.parametrize("task", ["sleepy", "sleepy_early"])  # the second acked on receipt
def test_warm_shutdown_returns_prefetched_tasks_and_none_is_lost(e2e, task):
    env, tasks = e2e
    results = [
        getattr(tasks, task).delay(0.3) for _ in range(20)
    ]  # all queued: the first fetch leases them
    worker = env.start_worker("-c", "1", "--prefetch-multiplier", "20")
    wait_for(lambda: env.ledger_entries("start"), 10, "a first task to start")
    assert env.stop_worker(worker) == 0
    done_before = sum(1 for r in results if r.state == states.SUCCESS)
    assert done_before < 20, "shutdown came too late to leave anything prefetched"
    log = env.log(worker)
    assert "returned" in log and "unstarted" in log, log

    env.start_worker("-c", "2")
    assert [r.get(timeout=30) for r in results] == [0.3] * 20
    assert max(env.ledger_entries("end").values()) == 1


def _raw(task: str, body: bytes, content_type: str = "application/json") -> Message:
    msg = build_task_message(default_registry, task_name=task, task_id=f"raw-{task}-{content_type}")
    return Message(msg.headers, msg.properties, body, content_type, "utf-8")


def test_bad_input_is_dead_lettered_with_a_reason_and_worker_keeps_serving(e2e):
    env, tasks = e2e
    app = tasks.app
    unknown = app.send_task("e2e_tasks.ad", (1, 2))
    wrong_args = app.send_task("e2e_tasks.add", (1, 2, 3))
    broken = _raw("e2e_tasks.add", b"[[1, 2], {not json")
    app.broker.publish(Publication(broken, Route("celery")))
    pickled = _raw("e2e_tasks.add", b"\x80\x04K\x01.", "application/x-python-serialize")
    app.broker.publish(Publication(pickled, Route("celery")))

    env.start_worker("-c", "2")
    with pytest.raises(NotRegistered, match=r"did you mean 'e2e_tasks\.add'"):
        unknown.get(timeout=10)
    with pytest.raises(InvalidTaskArguments):
        wrong_args.get(timeout=10)
    with pytest.raises(ProtocolError, match="cannot decode"):
        app.AsyncResult(broken.task_id).get(timeout=10)
    with pytest.raises(ProtocolError, match="accept_content"):
        app.AsyncResult(pickled.task_id).get(timeout=10)

    assert tasks.add.delay(20, 22).get(timeout=10) == 42  # still serving
    # Results are stored before messages are set aside: wait for all four dead letters.
    wait_for(lambda: len(app.broker.dead_letters()) == 4, 10, "four dead letters")
    reasons = {d.message.task_id: d.reason for d in app.broker.dead_letters()}
    assert "NotRegistered" in reasons[unknown.id]
    assert "InvalidTaskArguments" in reasons[wrong_args.id]
    assert "DecodeError" in reasons[broken.task_id]
    assert "ContentDisallowed" in reasons[pickled.task_id]
    assert env.ledger_entries("run")[wrong_args.id] == 0


def _insert_rows(path: Path, headers: list[str]) -> None:
    """Message rows whose headers are whatever a person (or a bug) wrote there."""
    body = _raw("e2e_tasks.add", b"[[1, 1], {}, {}]").body
    with closing(sqlite3.connect(path)) as conn, conn:
        conn.executemany(
            "INSERT INTO celeriac_messages (queue, priority, state, visible_at, headers,"
            " properties, content_type, content_encoding, body)"
            " VALUES ('celery', 0, 0, 0, ?, '{}', 'application/json', 'utf-8', ?)",
            [(h, body) for h in headers],
        )


def test_rows_that_are_not_messages_are_dead_lettered_and_the_queue_flows(e2e):
    env, tasks = e2e
    app = tasks.app
    results = [tasks.add.delay(i, i) for i in range(25)]
    bad = ["{not json", "[1, 2]", "null"]
    _insert_rows(env.tmp / "broker.sqlite3", bad)
    results += [tasks.add.delay(i, i) for i in range(25, 51)]

    env.start_worker("-c", "2")
    assert [r.get(timeout=30) for r in results] == [2 * i for i in range(51)]
    runs = env.ledger_entries("run")
    assert runs == {r.id: 1 for r in results}
    wait_for(lambda: app.broker.depth("celery") == 0, 10, "every message settled")
    dead = app.broker.dead_letters()
    assert sorted(d.reason.split(":")[1].strip() for d in dead) == [
        "headers are not JSON",
        "headers are not a JSON object but NoneType",
        "headers are not a JSON object but list",
    ]

    # What an operator sees: the list works, though what the rows hold is not a task.
    listed = subprocess.run(
        [sys.executable, "-m", "celeriac", "-A", "e2e_tasks:app", "dlq", "list", "--json"],
        env=env.env,
        cwd=env.tmp,
        capture_output=True,
        timeout=60,
    )
    assert listed.returncode == 0, listed.stderr.decode()
    rows = json.loads(listed.stdout)
    assert [(r["queue"], r["task"], r["task_id"]) for r in rows] == [("celery", None, None)] * 3
