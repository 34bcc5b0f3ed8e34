"""Poison messages: bad input (#10, #11), a bad SQLite row (#10, issue 13 c), a task that
kills its own process (#12, issue 13 a)."""

from __future__ import annotations

import json
import time

from celeriac.protocol.message import Message, build_task_message
from celeriac.protocol.publication import Publication, Route
from celeriac.protocol.serializers import default_registry
from tests.faults.cluster import Cluster, await_, wait_for
from tests.faults.matrix import cells


def _raw(task: str, task_id: str, body: bytes, content_type: str) -> Message:
    msg = build_task_message(default_registry, task_name=task, task_id=task_id)
    return Message(msg.headers, msg.properties, body, content_type, "utf-8")


def _queue(c: Cluster) -> str:
    return str(c.conf.get("task_default_queue", "celery"))


@cells("poison_input")
def test_poison_input_is_dead_lettered_and_the_worker_keeps_serving(cluster, broker, record):
    c = cluster(broker)
    app, tasks = c.app, c.tasks
    route = Route(_queue(c))
    bad = {
        "broken": _raw("faults.rec", "bad-broken", b"[[1, 2], {not json", "application/json"),
        "pickled": _raw(
            "faults.rec", "bad-pickled", b"\x80\x04K\x01.", "application/x-python-serialize"
        ),
    }
    good = []
    for i, msg in enumerate(bad.values()):
        app.broker.publish(Publication(msg, route))
        good += [tasks.rec.delay(0.0).id for _ in range(5)]
        if i == 0:
            unknown = app.send_task("faults.nope", (1, 2)).id
            wrong_args = app.send_task("faults.add", (1, 2, 3)).id
            good += [tasks.rec.delay(0.0).id for _ in range(5)]
    expected = {"bad-broken": "DecodeError", "bad-pickled": "ContentDisallowed"}
    expected |= {unknown: "NotRegistered", wrong_args: "InvalidTaskArguments"}
    if broker == "redis":  # a list element that is not an envelope at all
        key = f"{c.conf['broker_transport_options']['global_keyprefix']}{_queue(c)}"
        app.broker.client.lpush(key, b"\xffnot an envelope")
        good += [tasks.rec.delay(0.0).id for _ in range(5)]
    worker = c.start_worker()
    wait_for(lambda: c.all_done(good), 20, "every good task to run")
    want = len(expected) + (broker == "redis")
    await_(lambda: len(c.dead_letters()) >= want, 10)
    letters = c.dead_letters()
    reasons = {d.message.task_id: d.reason for d in letters}
    lost, dups, _ = c.tally(good)
    missing = [t for t, kind in expected.items() if kind not in reasons.get(t, "")]
    record(
        lost=lost,
        duplicated=dups,
        allowed=0,
        detail=f"{len(letters)} of {want} bad messages dead-lettered; without their reason: "
        f"{len(missing)}",
    )
    assert lost == 0 and dups == 0
    assert missing == [], reasons
    assert len(letters) == want
    assert c.ledger.started()[wrong_args] == 0
    assert worker.alive(), worker.log()[-3000:]


@cells("bad_row")
def test_one_bad_sqlite_row_does_not_stop_the_queue(cluster, broker, record):
    import sqlite3

    c = cluster(broker)
    first = [c.tasks.rec.delay(0.0).id for _ in range(3)]
    db = sqlite3.connect(c.url.removeprefix("sqlite:///"), timeout=30)
    with db:
        db.execute(
            "INSERT INTO celeriac_messages (queue, priority, state, visible_at, headers, "
            "properties, content_type, content_encoding, body) "
            "VALUES ('celery', 0, 0, 0, 'not json {', '{}', 'application/json', 'utf-8', x'5b5d')"
        )
    db.close()
    after = [c.tasks.rec.delay(0.0).id for _ in range(10)]
    worker = c.start_worker()
    await_(lambda: c.all_done(first + after), 5)
    lost, dups, _ = c.tally(first + after)
    letters = c.dead_letters()
    record(
        lost=lost,
        duplicated=dups,
        allowed=0,
        detail=f"{lost} of {len(first + after)} tasks never ran within 5 s; "
        f"{len(letters)} dead letter(s)",
    )
    assert lost == 0
    assert len(letters) == 1
    assert worker.alive()


@cells("poison_crash")
def test_task_that_kills_its_process_is_dead_lettered(cluster, broker, record):
    c = cluster(broker, vt=1.0, worker_max_deliveries=3)
    tasks = c.tasks
    poison = tasks.crash.delay(1)
    others = [tasks.rec.delay(0.1).id for _ in range(10)]
    began = time.time()
    # one message per child: what the crash takes down is the poison task alone (issue 13 b,
    # a crash charging the whole batch, is #2's)
    worker = c.start_worker("--prefetch-multiplier", "1")
    quarantined = await_(lambda: any(d.message.task_id == poison.id for d in c.dead_letters()), 8)
    took = time.time() - began
    await_(lambda: c.all_done(others), 10 if quarantined else 3)
    crashes = c.ledger.started()[poison.id]
    lost, dups, _ = c.tally(others)
    deliveries = [r[0] for r in c.ledger.runs(poison.id)]
    letters = [d for d in c.dead_letters() if d.message.task_id == poison.id]
    record(
        lost=lost,
        duplicated=dups,
        allowed=0,
        recover=took if quarantined else None,
        detail=f"process crashes {crashes} (deliveries seen {deliveries}); dead-lettered: "
        f"{'yes, ' + json.dumps(letters[0].reason[:60]) if letters else 'no (8 s)'}",
    )
    assert quarantined, "the poison task was never dead-lettered"
    assert lost == 0 and dups == 0
    assert crashes <= 3
    assert worker.alive()
