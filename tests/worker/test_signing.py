"""Message signing end to end in one process: a signing worker (threads pool) on a private
SQLite file, clients with the current key, an older accepted key, a removed key, and none."""

from __future__ import annotations

import dataclasses
import json
import logging
import secrets
import sqlite3
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from celeriac import Celeriac, chord, signals, states
from celeriac.beat.scheduler import start_embedded_beat
from celeriac.brokers.base import DeadLetter
from celeriac.exceptions import ConfigurationError, SignatureError
from celeriac.keyring import keyring_of
from celeriac.protocol.message import Message
from celeriac.protocol.signing import KEY_ID_HEADER, SIGNATURE_HEADER, key_id
from celeriac.result import AsyncResult
from celeriac.worker import Worker

NEW, OLD, REMOVED = (secrets.token_hex(16) for _ in range(3))
KEY_VAR = f"CELERIAC_TEST_KEY_{uuid.uuid4().hex[:8].upper()}"


@dataclasses.dataclass
class Setup:
    url: str
    db: Path
    queue: str
    node: str
    worker_app: Celeriac
    clients: dict[str, Celeriac]
    runs: list[str]

    def client(self, key: str | None, **conf: Any) -> Celeriac:
        app = Celeriac(
            f"client-{uuid.uuid4().hex[:6]}",
            broker_url=self.url,
            task_default_queue=self.queue,
            task_signing_key=key,
            **conf,
        )
        self.clients[uuid.uuid4().hex] = app
        return app

    def dead_letter(self, task_id: str, timeout: float = 10.0) -> DeadLetter:
        return wait_until(
            lambda: next(
                (
                    d
                    for d in self.worker_app.broker.dead_letters(1000)
                    if d.message.task_id == task_id
                ),
                None,
            ),
            timeout,
            f"the dead letter of {task_id}",
        )


def wait_until(check: Callable[[], Any], timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.02)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Setup]:
    tmp = tmp_path_factory.mktemp("signing")
    db = tmp / "broker.sqlite3"
    url = f"sqlite:///{db}"
    key_file = tmp / "old.key"
    key_file.write_text(OLD + "\n")
    mp = pytest.MonkeyPatch()
    mp.setenv(KEY_VAR, NEW)
    queue, node = f"sig-{uuid.uuid4().hex[:8]}", f"sig-{uuid.uuid4().hex[:8]}@test"
    runs: list[str] = []
    # The worker accepts NEW (from the environment, it signs) and OLD (from a file).
    app = Celeriac(
        "signing-worker",
        broker_url=url,
        task_default_queue=queue,
        task_signing_keys=[f"env:{KEY_VAR}", f"file:{key_file}"],
        result_signing=True,
    )

    @app.task(name="sig.add", bind=True)
    def add(self: Any, x: int, y: int = 0) -> int:
        runs.append(self.request.id)
        return x + y

    @app.task(name="sig.mul")
    def mul(x: int, y: int) -> int:
        return x * y

    @app.task(name="sig.tsum")
    def tsum(values: list[int]) -> int:
        return sum(values)

    @app.task(name="sig.flaky", bind=True, max_retries=3)
    def flaky(self: Any, fail_times: int) -> int:
        if self.request.retries < fail_times:
            raise self.retry(countdown=0)
        return int(self.request.retries)

    @app.task(name="sig.tick", bind=True)
    def tick(self: Any) -> str:
        runs.append(f"tick {self.request.id}")
        return "tick"

    worker = Worker(
        app,
        queues=[queue],
        pool="threads",
        concurrency=2,
        hostname=node,
        install_signal_handlers=False,
    )
    thread = threading.Thread(target=worker.start, daemon=True)
    thread.start()
    assert worker.ready.wait(15)
    s = Setup(url, db, queue, node, app, {}, runs)
    try:
        yield s
    finally:
        worker.stop()
        thread.join(15)
        for client in s.clients.values():
            client.close()
        app.close()
        mp.undo()


def test_an_unsigned_message_is_dead_lettered_and_stores_no_result(setup, caplog):
    caplog.set_level(logging.ERROR, logger="celeriac.worker")
    unsigned = setup.client(None)
    result = unsigned.send_task("sig.add", (1, 2))
    assert SIGNATURE_HEADER not in _sent_headers(unsigned, "sig.add")
    dead = setup.dead_letter(result.id)
    assert dead.reason == (
        f"SignatureError: task 'sig.add' id {result.id!r} refused: message is not signed "
        f"(no {SIGNATURE_HEADER} header)"
    )
    assert result.id not in setup.runs
    assert unsigned.backend.get_meta(result.id)["status"] == states.PENDING
    assert f"dead-lettered sig.add[None]: {dead.reason}" in caplog.text


def test_a_signed_message_runs(setup):
    signed = setup.client(NEW)
    result = signed.send_task("sig.add", (2, 3))
    headers = _sent_headers(signed, "sig.add", task_id=result.id)
    assert headers[KEY_ID_HEADER] == key_id(NEW.encode())
    assert AsyncResult(result.id, setup.worker_app).get(timeout=10) == 5
    assert setup.runs.count(result.id) == 1


def _other_args(body: bytes, args: list[Any]) -> bytes:
    _, kwargs, embed = json.loads(body)
    return json.dumps([args, kwargs, embed]).encode()


@pytest.mark.parametrize(
    "forge",
    [
        pytest.param(lambda m: dataclasses.replace(m, body=_other_args(m.body, [7, 9])), id="body"),
        pytest.param(
            lambda m: dataclasses.replace(m, headers={**m.headers, "task": "sig.mul"}), id="task"
        ),
    ],
)
def test_a_message_changed_after_signing_is_dead_lettered(setup, forge):
    signed = setup.client(NEW)
    publication = signed.prepare_message("sig.add", (7, 8))
    forged: Message = forge(publication.message)
    assert forged != publication.message
    signed.broker.publish(dataclasses.replace(publication, message=forged))
    dead = setup.dead_letter(forged.task_id or "")
    assert dead.reason == (
        f"SignatureError: task {forged.headers['task']!r} id {forged.task_id!r} refused: "
        "message signature does not match its content (changed after signing)"
    )
    assert forged.task_id not in setup.runs
    assert signed.backend.get_meta(forged.task_id or "")["status"] == states.PENDING


def test_a_message_signed_by_celerys_auth_serializer_is_refused_as_unsigned(setup):
    # Celery's security serializer wraps the body (content type application/data) with a
    # certificate signature; none of Celeriac's headers.
    signed = setup.client(None)
    publication = signed.prepare_message("sig.add", (5, 5))
    wrapped = dataclasses.replace(
        publication.message,
        body=b'{"body": "W1s1LCA1XSwge30sIHt9XQ==", "signer": "x", "signature": "c2ln"}',
        content_type="application/data",
    )
    signed.broker.publish(dataclasses.replace(publication, message=wrapped))
    dead = setup.dead_letter(wrapped.task_id or "")
    assert dead.reason.endswith(f"refused: message is not signed (no {SIGNATURE_HEADER} header)")


def test_rotation_an_old_accepted_key_runs_a_removed_key_is_refused(setup):
    old = setup.client(OLD).send_task("sig.add", (10, 1))
    removed = setup.client(REMOVED).send_task("sig.add", (10, 2))
    assert AsyncResult(old.id, setup.worker_app).get(timeout=10) == 11
    dead = setup.dead_letter(removed.id)
    assert dead.reason == (
        f"SignatureError: task 'sig.add' id {removed.id!r} refused: signed with key id "
        f"{key_id(REMOVED.encode())!r}, which is not an accepted signing key"
    )
    assert removed.id not in setup.runs
    assert removed.backend.get_meta(removed.id)["status"] == states.PENDING


def test_retries_and_follow_ups_a_signing_worker_publishes_are_signed_and_run(setup):
    app = setup.worker_app
    published: list[dict[str, Any]] = []

    def record(sender: Any = None, headers: dict[str, Any] | None = None, **_: Any) -> None:
        # sent by the worker: from inside a task, or a chord's body
        if headers and (headers.get("parent_id") or headers.get("task") == "sig.tsum"):
            published.append(dict(headers))

    signals.after_task_publish.connect(record)
    try:
        flaky = app.send_task("sig.flaky", (2,))
        chained = (app.tasks["sig.add"].s(1, 2) | app.tasks["sig.mul"].s(10)).apply_async()
        linked = app.tasks["sig.add"].apply_async((4, 4), link=app.tasks["sig.mul"].s(3))
        header = [app.tasks["sig.add"].s(i, i) for i in range(3)]
        chorded = chord(header)(app.tasks["sig.tsum"].s())
        assert flaky.get(timeout=10) == 2
        assert chorded.get(timeout=10) == 6
        assert chained.get(timeout=10) == 30
        follow = wait_until(
            lambda: [h for h in published if h["parent_id"] == linked.id], 10, "the link"
        )
        assert AsyncResult(follow[0]["id"], app).get(timeout=10) == 24
    finally:
        signals.after_task_publish.disconnect(record)
    kinds = sorted((h["task"], h["retries"]) for h in published)
    assert kinds == [
        ("sig.flaky", 1),
        ("sig.flaky", 2),
        ("sig.mul", 0),
        ("sig.mul", 0),
        ("sig.tsum", 0),
    ]
    signer = key_id(NEW.encode())
    assert [h[KEY_ID_HEADER] for h in published] == [signer] * 5
    assert all(len(h[SIGNATURE_HEADER]) == 64 for h in published)


def test_a_beat_sent_task_is_signed_and_runs(setup):
    app = setup.worker_app
    app.conf.beat_schedule = {"sig-tick": {"task": "sig.tick", "schedule": 0.3}}
    beat = start_embedded_beat(app)
    try:
        ran = wait_until(lambda: [r for r in setup.runs if r.startswith("tick ")], 15, "a tick")
    finally:
        beat.stop()
        app.conf.beat_schedule = {}
    # It ran on a worker that runs only signed messages; its message was signed with NEW.
    task_id = ran[0].split()[1]
    assert AsyncResult(task_id, app).get(timeout=10) == "tick"
    beat_pub = app.prepare_message("sig.tick", headers={"beat_entry": "sig-tick"})
    assert beat_pub.message.headers[KEY_ID_HEADER] == key_id(NEW.encode())


def test_control_an_unsigned_command_is_ignored_a_signed_one_answered(setup, caplog):
    caplog.set_level(logging.WARNING, logger="celeriac.control")
    unsigned = setup.client(None)
    assert unsigned.control.ping(destination=[setup.node], timeout=1.0) == []
    wait_until(
        lambda: "ignored remote-control command 'ping': not signed" in caplog.text,
        5,
        "the worker's log line",
    )
    signed = setup.client(NEW)
    assert signed.control.ping(destination=[setup.node], timeout=5.0) == [
        {setup.node: {"ok": "pong"}}
    ]


def test_a_client_with_a_key_ignores_unsigned_replies(setup, caplog):
    caplog.set_level(logging.WARNING, logger="celeriac.control")
    # A node without a key answers; a client with one drops the unsigned reply.
    node = f"nokey-{uuid.uuid4().hex[:6]}@test"
    keyless = setup.client(None).connections.mailbox()
    keyless.listen(node)
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            for command in keyless.receive(0.1):
                keyless.reply(command, {"ok": "pong"})

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        signed = setup.client(NEW)
        assert signed.control.ping(destination=[node], timeout=1.0) == []
        assert f"ignored reply from {node}: not signed" in caplog.text
        assert setup.client(None).control.ping(destination=[node], timeout=5.0) == [
            {node: {"ok": "pong"}}
        ]
    finally:
        stop.set()
        thread.join(5)
        keyless.close()


def test_a_tampered_or_unsigned_result_raises_on_get(setup):
    reader = setup.client(NEW, result_signing=True)
    done = reader.send_task("sig.add", (20, 1))
    assert AsyncResult(done.id, reader).get(timeout=10) == 21
    with sqlite3.connect(setup.db) as db:
        (raw,) = db.execute(
            "SELECT meta FROM celeriac_results WHERE task_id = ?", (done.id,)
        ).fetchone()
        doc = json.loads(raw)
        assert doc["celeriac_signature"].startswith(key_id(NEW.encode()) + ":")
        doc["result"] = 9999
        db.execute(
            "UPDATE celeriac_results SET meta = ? WHERE task_id = ?",
            (json.dumps(doc).encode(), done.id),
        )
    with pytest.raises(
        SignatureError, match=f"the stored result of task {done.id}: signature does not match"
    ):
        AsyncResult(done.id, reader).get(timeout=5)
    # A document written without the key (by whoever can write the store) is refused too.
    forged_id = str(uuid.uuid4())
    setup.client(None).backend.store_result(forged_id, 42, states.SUCCESS)
    with pytest.raises(SignatureError, match="is not signed"):
        AsyncResult(forged_id, reader).get(timeout=5)
    # Without result_signing, the same reader reads it.
    assert AsyncResult(forged_id, setup.client(NEW)).get(timeout=5) == 42


def test_the_key_never_appears_in_inspect_conf_or_errors(setup, caplog):
    caplog.set_level(logging.DEBUG)
    signed = setup.client(NEW)
    replies = signed.control.inspect(destination=[setup.node], timeout=5.0).conf()
    conf = replies[setup.node]
    assert conf["task_signing_keys"] == "********"
    text = json.dumps(replies) + repr(setup.worker_app.conf) + repr(keyring_of(signed.conf))
    for key in (NEW, OLD):
        assert key not in text
    with pytest.raises(ConfigurationError) as info:
        keyring_of(Celeriac("short", broker_url="memory://", task_signing_key="short-secret").conf)
    assert "short-secret" not in str(info.value)
    assert str(info.value).startswith("task_signing_key: a signing key needs at least 16 bytes")
    for key in (NEW, OLD, "short-secret"):
        assert key not in caplog.text


def _sent_headers(app: Celeriac, name: str, task_id: str | None = None) -> dict[str, Any]:
    """The headers ``app`` puts on a message for ``name`` (a fresh one, not sent)."""
    return app.prepare_message(name, task_id=task_id).message.headers
