"""Issue #7 end to end: real `celeriac worker` and `celery worker` processes on a real RabbitMQ."""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from celeriac.brokers import create_broker
from tests import amqp_support, redis_support

from .amqp_env import AmqpEnv
from .conftest import ledger_records
from .redis_env import HERE, wait_for

pytestmark = [pytest.mark.e2e, pytest.mark.amqp]


def _e2e(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, port: int | None = None) -> Any:
    with amqp_support.private_vhost() as vhost:
        env = AmqpEnv(tmp_path, vhost, port)
        monkeypatch.setenv("E2E_LEDGER", str(env.ledger))
        monkeypatch.syspath_prepend(str(HERE))
        import amqp_tasks

        amqp_tasks.LEDGER = env.ledger
        amqp_tasks.app.conf.update(
            broker_url=env.worker_url, result_backend=None, broker_transport_options={}
        )
        amqp_tasks.app.close()
        try:
            yield env, amqp_tasks
        finally:
            amqp_tasks.app.close()
            env.close()


@pytest.fixture
def amqp_e2e(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[AmqpEnv, Any]]:
    yield from _e2e(tmp_path, monkeypatch)


@pytest.fixture
def proxied(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    """Client and workers reach RabbitMQ through a proxy the test can cut."""
    proxy = amqp_support.Proxy()
    try:
        for env, tasks in _e2e(tmp_path, monkeypatch, proxy.port):
            yield env, tasks, proxy
    finally:
        proxy.close()


def ran(env: AmqpEnv) -> set[str]:
    """Ids in the ledger, skipping a line a worker thread is still writing."""
    ids = set()
    for _, parts in ledger_records(env.ledger):
        if parts[0] == "run":
            ids.add(parts[1])
    return ids


def rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


# prefork: each child opens its rpc backend, then its broker link (a fork reset once lost it)
@pytest.mark.parametrize("pool", ["threads", "prefork"])
def test_celery_client_to_celeriac_worker_results_over_rpc(amqp_e2e, pool):
    from celery import Celery

    env, _ = amqp_e2e
    env.start_worker("-P", pool, "-c", "2")
    client = Celery("interop-client", broker=env.url, backend="rpc://", set_as_current=False)
    try:
        assert client.send_task("interop.add", (2, 3)).get(timeout=20) == 5
        assert client.send_task("interop.add", (10,), {"y": 1}).get(timeout=20) == 11
    finally:
        client.close()


@pytest.mark.redis
def test_results_in_redis_each_task_once_with_acks_as_the_children_go(amqp_e2e):
    """RabbitMQ with Redis results, the common Celery setup: a prefork child stores results
    in the trip that reads the states of what RabbitMQ sent ahead (LookupCarriesResults).
    Every task runs once, every result arrives, nothing is left on the queue or held."""
    env, tasks = amqp_e2e
    prefix = redis_support.new_prefix()
    results = redis_support.url_with_prefix(prefix)
    env.env["CELERIAC_RESULT_BACKEND"] = results
    try:
        env.start_worker("-P", "prefork", "-c", "2")
        tasks.app.conf.update(broker_url=env.url, result_backend=results)
        tasks.app.close()
        sent = [tasks.add.delay(i, 1) for i in range(400)]
        assert [r.get(timeout=30) for r in sent] == [i + 1 for i in range(400)]
        runs = [parts[1] for _, parts in ledger_records(env.ledger) if parts[0] == "run"]
        assert sorted(runs) == sorted(r.id for r in sent)  # each exactly once
        broker = create_broker(env.url)
        try:
            wait_for(lambda: broker.depth("celery") == 0, 10, "every message acknowledged")
        finally:
            broker.close()
    finally:
        tasks.app.close()
        redis_support.drop(prefix)


def test_celeriac_client_to_celery_worker_results_over_rpc(amqp_e2e):
    env, tasks = amqp_e2e
    env.start_celery_worker()
    tasks.app.conf.update(broker_url=env.url, result_backend="rpc://")
    tasks.app.close()
    # No app.backend first: sending opens the reply queue and names it, as Celery's client does.
    assert tasks.add.delay(4, 5).get(timeout=20) == 9
    assert tasks.add.apply_async((1,), {"y": 1}).get(timeout=20) == 2


def test_5000_tasks_survive_two_cut_connections(proxied):
    env, tasks, proxy = proxied
    env.start_worker("-P", "threads", "-c", "8")
    sent: list[str] = []
    failed = 0
    lock = threading.Lock()

    def send(i: int) -> None:
        nonlocal failed
        try:
            result = tasks.add.apply_async((i,), ignore_result=True)
        except Exception:  # not returned for: the caller knows it was not sent
            with lock:
                failed += 1
            return
        with lock:
            sent.append(result.id)

    def cutter() -> None:
        for at in (1500, 3500):
            wait_for(lambda at=at: len(sent) >= at, 60, f"{at} tasks sent")
            proxy.cut()

    cuts = threading.Thread(target=cutter)
    cuts.start()
    with ThreadPoolExecutor(16) as pool:
        list(pool.map(send, range(5000)))
    cuts.join(60)
    assert proxy.cuts >= 2
    assert len(sent) + failed == 5000
    assert len(sent) >= 4900, f"{failed} publishes failed"
    want = set(sent)
    try:
        wait_for(lambda: want <= ran(env), 60, "every sent task to run")
    except AssertionError as exc:
        missing = want - ran(env)
        tail = env.log(env.workers[0])[-3000:]
        raise AssertionError(f"{len(missing)} never ran; worker log:\n{tail}") from exc


def test_sigkill_mid_task_is_redelivered_and_succeeds(amqp_e2e):
    env, tasks = amqp_e2e
    first = env.start_worker("-c", "1")
    result = tasks.sleepy.delay(1.5)
    wait_for(lambda: env.ledger_entries("start")[result.id] == 1, 15, "the task to start")
    os.kill(first.pid, signal.SIGKILL)
    first.wait(5)
    env.start_worker("-c", "1")
    wait_for(lambda: env.ledger_entries("end")[result.id] == 1, 20, "the task to finish")
    assert env.ledger_entries("start")[result.id] == 2


def test_a_task_that_kills_its_child_is_dead_lettered_after_max_deliveries(amqp_e2e):
    """A classic queue says only *that* a message was redelivered; the worker carries the count
    itself, so a poison task stops at worker_max_deliveries instead of looping."""
    env, tasks = amqp_e2e
    worker = env.start_worker("-c", "1")
    poison = tasks.die.delay()
    broker = create_broker(env.url)
    try:
        dead = wait_for(lambda: broker.dead_letters(), 60, "the poison task to be dead-lettered")
    finally:
        broker.close()
    assert [d.message.task_id for d in dead] == [poison.id]  # type: ignore[union-attr]
    assert "delivered 5 times" in dead[0].reason  # type: ignore[index]
    assert env.ledger_entries("start")[poison.id] == 5  # worker_max_deliveries, no more
    healthy = tasks.add.delay(1, 2)  # and the worker serves the rest
    wait_for(lambda: env.ledger_entries("run")[healthy.id] == 1, 15, "a healthy task to run")
    assert worker.poll() is None


def test_10000_hour_long_countdowns_cost_the_worker_no_memory(amqp_e2e):
    env, tasks = amqp_e2e
    worker = env.start_worker("-P", "threads", "-c", "4")
    time.sleep(2)
    idle = rss_kb(worker.pid)
    with ThreadPoolExecutor(16) as pool:
        list(pool.map(lambda i: tasks.add.apply_async((i,), countdown=3600), range(10_000)))
    time.sleep(2)
    grown = rss_kb(worker.pid) - idle
    print(f"worker RSS idle {idle} kB, after 10,000 parked countdowns {grown:+d} kB")
    assert grown < 20 * 1024, f"worker RSS grew by {grown} kB"
    broker = create_broker(env.url)
    try:
        assert broker.depth("celery") == 10_000
        env.stop_worker(worker)
        worker = env.start_worker("-P", "threads", "-c", "4")
        sent = time.time()
        soon = tasks.stamp.apply_async(countdown=3)
        wait_for(lambda: env.ledger_entries()[soon.id] == 1, 10, "the 3 s countdown")
        ran = _ran_at(env, soon.id)
        print(f"3 s countdown ran after {ran - sent:.3f} s")
        assert 3.0 <= ran - sent < 4.0, ran - sent
        assert broker.depth("celery") == 10_000  # still parked after the restart
        assert sum(env.ledger_entries().values()) == 1
    finally:
        broker.close()


def _ran_at(env: AmqpEnv, task_id: str) -> float:
    for _, (_kind, tid, at) in ledger_records(env.ledger):
        if tid == task_id:
            return float(at)
    raise AssertionError(f"{task_id} did not run")


def test_higher_priority_queued_later_runs_first(amqp_e2e):
    env, tasks = amqp_e2e
    env.env["E2E_MAX_PRIORITY"] = "10"
    tasks.app.conf.update(broker_transport_options={"max_priority": 10})
    tasks.app.close()
    env.start_worker("-P", "threads", "-c", "1", "--prefetch-multiplier", "1")
    busy = tasks.sleepy.delay(1.5)
    wait_for(lambda: env.ledger_entries("start")[busy.id] == 1, 15, "the worker to be busy")
    low = [tasks.add.apply_async((i,), priority=0).id for i in range(5)]
    high = [tasks.add.apply_async((i,), priority=9).id for i in range(5)]
    wait_for(lambda: len(env.ledger_entries()) == 10, 20, "all ten to run")
    order = sorted((_ran_at(env, t), t) for t in low + high)
    assert [t for _, t in order[:5]] == high
    assert [t for _, t in order[5:]] == low


def test_bad_messages_are_dead_lettered_with_a_reason(amqp_e2e):
    import amqp

    env, tasks = amqp_e2e
    env.start_worker("-P", "threads", "-c", "2")
    headers = {"lang": "py", "task": "interop.add", "id": "pickled", "retries": 0}

    def inject(ch: Any) -> None:
        bad = [
            ("pickled", "application/x-python-serialize", b"\x80\x04N."),
            ("broken", "application/json", b"[[1, 2], {"),
            ("unknown", "application/json", b"[[], {}, {}]"),
        ]
        for task_id, ctype, body in bad:
            h = {**headers, "id": task_id}
            if task_id == "unknown":
                h["task"] = "interop.nope"
            message = amqp.Message(
                body,
                content_type=ctype,
                content_encoding="utf-8",
                application_headers=h,
                delivery_mode=2,
            )
            ch.basic_publish(message, exchange="", routing_key="celery", mandatory=True)

    broker = create_broker(env.url)
    try:
        broker.depth("celery")  # declared before a peer that does not declare publishes to it
        amqp_support.raw(env.url, inject)
        good = tasks.add.delay(1, 2)
        wait_for(lambda: env.ledger_entries()[good.id] == 1, 20, "the good task to run")
        letters = wait_for(lambda: len(found := broker.dead_letters()) == 3 and found, 20, "DLQ")
        reasons = {d.message.task_id: d.reason for d in letters}  # type: ignore[union-attr]
        assert "ContentDisallowed" in reasons["pickled"]
        assert "DecodeError" in reasons["broken"]
        assert "NotRegistered" in reasons["unknown"]
        assert all(d.queue == "celery" for d in letters)  # type: ignore[union-attr]
    finally:
        broker.close()
    assert env.workers[0].poll() is None  # the worker kept going
