"""Signing on a real Redis with real processes: a `celeriac worker` (prefork, its child consumes)
that requires signatures, Celery's client and Celery's worker beside it."""

from __future__ import annotations

import json
import secrets
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from celeriac import Celeriac
from celeriac.brokers.base import DeadLetter
from celeriac.protocol.signing import KEY_ID_HEADER, SIGNATURE_HEADER, key_id
from tests import redis_support

from .redis_env import HERE, RedisEnv, wait_for

pytestmark = [pytest.mark.e2e, pytest.mark.redis]

KEY = secrets.token_hex(24)


@pytest.fixture
def signing_e2e(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[RedisEnv, Any]]:
    env = RedisEnv(tmp_path)
    queue = f"sig-{uuid.uuid4().hex[:8]}"
    env.env.update(SIGNING_E2E_KEY=KEY, SIGNING_E2E_QUEUE=queue)
    monkeypatch.setenv("SIGNING_E2E_KEY", KEY)
    monkeypatch.syspath_prepend(str(HERE))
    import signing_tasks

    signing_tasks.app.conf.update(
        broker_url=env.url, result_backend=env.url, task_default_queue=queue
    )
    signing_tasks.app.close()
    try:
        yield env, signing_tasks
    finally:
        signing_tasks.app.close()
        env.close()


def _dead(app: Celeriac, task_id: str) -> DeadLetter:
    return wait_for(  # type: ignore[return-value]
        lambda: next(
            (d for d in app.broker.dead_letters(1000) if d.message.task_id == task_id), None
        ),
        15,
        f"the dead letter of {task_id}",
    )


def _celery_client(env: RedisEnv) -> Any:
    from celery import Celery

    url = redis_support.base_url()
    app = Celery("interop-client", broker=url, backend=url, set_as_current=False)
    app.conf.update(
        broker_transport_options={"global_keyprefix": env.prefix},
        result_backend_transport_options={"global_keyprefix": env.prefix},
    )
    return app


def test_a_signing_worker_runs_signed_work_and_refuses_the_rest(signing_e2e):
    env, tasks = signing_e2e
    app, queue = tasks.app, tasks.app.conf.task_default_queue
    node = f"sig-{uuid.uuid4().hex[:6]}@e2e"
    argv = [sys.executable, "-m", "celeriac", "-A", "signing_tasks:app", "worker", "-l", "info"]
    worker = env._spawn("w1", [*argv, "-n", node, "-c", "1", "-Q", queue], b" ready:")

    # Signed: runs, and so do the retries the worker's child publishes; results are signed.
    assert tasks.add.delay(2, 3).get(timeout=15) == 5
    assert tasks.flaky.delay(2).get(timeout=15) == 2

    # Unsigned, from a Celeriac client without the key and from Celery's client.
    plain = Celeriac("plain", broker_url=env.url, result_backend=env.url)
    celery = _celery_client(env)
    try:
        unsigned = plain.send_task("interop.add", (1, 1), queue=queue)
        from_celery = celery.send_task("interop.add", (1, 2), queue=queue)
        for task_id in (unsigned.id, from_celery.id):
            assert _dead(app, task_id).reason == (
                f"SignatureError: task 'interop.add' id {task_id!r} refused: message is not "
                f"signed (no {SIGNATURE_HEADER} header)"
            )
        # Remote control: unsigned commands (ours or Celery's) go unanswered, signed ones not.
        assert plain.control.ping(destination=[node], timeout=1.0) == []
        assert celery.control.inspect(destination=[node], timeout=1.0).ping() is None
        assert app.control.ping(destination=[node], timeout=10.0) == [{node: {"ok": "pong"}}]
    finally:
        plain.close()
        celery.close()

    cli = subprocess.run(
        [*argv[:5], "inspect", "conf", "-d", node, "-t", "10", "--json"],
        env=env.env,
        cwd=env.tmp,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert cli.returncode == 0, cli.stderr
    conf = json.loads(cli.stdout)
    assert conf[node]["task_signing_key"] == "********"
    assert KEY not in cli.stdout + cli.stderr
    env.stop_worker(worker)
    log = env.log(worker)
    assert log.count("ignored remote-control command 'ping': not signed") == 2, log
    assert "dead-lettered interop.add[None]: SignatureError" in log
    assert KEY not in log


def test_a_celery_worker_runs_a_signed_celeriac_message(signing_e2e):
    env, tasks = signing_e2e
    env.start_celery_worker()
    publication = tasks.app.prepare_message("interop.add", (20, 22), queue="celery")
    headers = publication.message.headers
    assert headers[KEY_ID_HEADER] == key_id(KEY.encode()) and len(headers[SIGNATURE_HEADER]) == 64
    tasks.app.broker.publish(publication)
    # Celery stores its result unsigned: read it with a client that does not ask for signatures.
    plain = Celeriac("plain", broker_url=env.url, result_backend=env.url)
    try:
        assert plain.AsyncResult(publication.message.task_id).get(timeout=15) == 42
    finally:
        plain.close()
