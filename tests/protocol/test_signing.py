"""Signatures without a worker: what they cover, what they leave out, how keys are read, and that
a signed message survives every broker's round trip and redelivery."""

from __future__ import annotations

import dataclasses
import secrets

import pytest

from celeriac import Celeriac
from celeriac.brokers import Broker
from celeriac.exceptions import ConfigurationError, SignatureError
from celeriac.keyring import keyring_of, result_keyring_of
from celeriac.protocol.message import build_task_message
from celeriac.protocol.publication import Publication, Route
from celeriac.protocol.serializers import JSON, default_registry
from celeriac.protocol.signing import (
    KEY_ID_HEADER,
    SIGNATURE_HEADER,
    SIGNED_HEADERS,
    Keyring,
    key_id,
    sign_control,
    sign_document,
    sign_encoded,
    sign_message,
    verify_control,
    verify_document,
    verify_message,
)
from tests.amqp_support import amqp_vhost  # noqa: F401 - a fixture
from tests.brokers.test_contract import make_broker  # noqa: F401 - a fixture

KEY = b"k" * 32
RING = Keyring.of([KEY])


def signed(**kw):
    message = build_task_message(
        default_registry,
        task_name="t.add",
        task_id="id-1",
        args=(1, 2),
        callbacks=[{"task": "t.mul", "args": [3], "kwargs": {}, "options": {}}],
        time_limit=60,
        soft_time_limit=30.5,
        expires=2_000_000_000.0,
        now=1_900_000_000.0,
        **kw,
    )
    sign_message(message, RING)
    return message


def test_the_signed_headers_are_those_the_readme_lists():
    assert SIGNED_HEADERS == (
        "task", "id", "eta", "expires", "retries", "timelimit", "root_id", "parent_id", "group",
        "group_index", "ignore_result", "compression",
    )  # fmt: skip


@pytest.mark.parametrize("header", SIGNED_HEADERS)
def test_each_header_that_decides_what_runs_is_covered(header):
    message = signed()
    message.headers[header] = [999] if header == "timelimit" else "changed"
    with pytest.raises(SignatureError, match="does not match"):
        verify_message(message, RING)


def test_the_body_its_workflow_and_content_type_are_covered():
    message = signed()
    for forged in (
        dataclasses.replace(message, body=message.body.replace(b"t.mul", b"t.rm_")),
        dataclasses.replace(message, content_type="application/x-yaml"),
    ):
        with pytest.raises(SignatureError, match="does not match"):
            verify_message(forged, RING)


def test_rewritten_and_display_headers_stay_outside():
    message = signed()
    message.headers.update(
        {"x-celeriac-deliveries": 3, "x-death": [{"count": 1}], "argsrepr": "?", "origin": "x"}
    )
    message.properties["delivery_info"] = {"redelivered": True}
    verify_message(message, RING)


def test_re_encoding_numbers_does_not_break_it():
    message = signed()
    message.headers["timelimit"] = [60.0, 30.5]  # an int that came back as a float
    message.headers["retries"] = 0.0
    verify_message(message, RING)


def test_unsigned_and_unknown_key_messages_are_refused():
    message = signed()
    message.headers.pop(SIGNATURE_HEADER)
    with pytest.raises(SignatureError, match="not signed"):
        verify_message(message, RING)
    other = Keyring.of([b"o" * 32])
    with pytest.raises(SignatureError, match="not an accepted signing key"):
        verify_message(signed(), other)
    # Rotation: a ring that also holds KEY accepts it, and signs with its first key.
    rotated = Keyring.of([b"o" * 32, KEY])
    verify_message(signed(), rotated)
    assert rotated.signer[0] == key_id(b"o" * 32) != key_id(KEY)


def test_control_messages_and_result_documents():
    body, headers = {"method": "ping", "arguments": {}, "ticket": "t"}, {"expires": 5, "clock": 1}
    sign_control(body, headers, RING)
    headers["clock"] = 2  # the logical clock is not covered
    verify_control(body, headers, RING)
    with pytest.raises(SignatureError):
        verify_control({**body, "method": "shutdown"}, headers, RING)
    doc = sign_document({"status": "SUCCESS", "result": 3}, RING)
    assert verify_document(doc, RING, "r") == {"status": "SUCCESS", "result": 3}
    with pytest.raises(SignatureError, match="r: signature does not match"):
        verify_document({**doc, "result": 4}, RING, "r")
    # Encoded, decoded and re-encoded with other separators: still valid.
    data = sign_encoded(JSON.dumps({"status": "SUCCESS", "result": (1, 2.0)}), JSON, RING)
    verify_document(JSON.loads(data.replace(b", ", b",")), RING, "r")


def test_keys_from_the_environment_a_file_and_errors_that_hide_them(tmp_path, monkeypatch):
    new, old = secrets.token_hex(16), secrets.token_hex(16)
    monkeypatch.setenv("SIGNING_TEST_NEW", new)
    path = tmp_path / "old.key"
    path.write_text(old + "\n")
    conf = Celeriac(
        "k", broker_url="memory://", task_signing_keys=["env:SIGNING_TEST_NEW", f"file:{path}"]
    ).conf
    ring = keyring_of(conf)
    assert ring is not None
    assert [kid for kid, _ in ring.keys] == [key_id(new.encode()), key_id(old.encode())]
    assert new not in repr(ring) and old not in repr(ring)
    assert keyring_of(Celeriac("off", broker_url="memory://").conf) is None
    bad = {
        "task_signing_key": "env:SIGNING_TEST_MISSING",
        "task_signing_keys": [f"file:{tmp_path}/none.key"],
    }
    messages = {
        "task_signing_key": "task_signing_key: environment variable 'SIGNING_TEST_MISSING' is "
        "not set",
        "task_signing_keys": f"task_signing_keys: cannot read key file '{tmp_path}/none.key': "
        "No such file or directory",
    }
    for name, value in bad.items():
        with pytest.raises(ConfigurationError) as info:
            keyring_of(Celeriac("bad", broker_url="memory://", **{name: value}).conf)
        assert str(info.value) == messages[name]
    with pytest.raises(ConfigurationError, match="not both"):
        keyring_of(Celeriac("x", task_signing_key=new, task_signing_keys=[old]).conf)
    with pytest.raises(ConfigurationError, match="result_signing needs"):
        result_keyring_of(Celeriac("x", result_signing=True).conf)
    with pytest.raises(ConfigurationError, match="did you mean 'task_signing_key'"):
        Celeriac("x", task_signing_kye=new)


def test_an_eager_call_with_a_key_is_signed_and_checked():
    app = Celeriac(
        "eager", broker_url="memory://", task_always_eager=True, task_signing_key=KEY.decode()
    )

    @app.task(name="eager.add")
    def add(x: int, y: int) -> int:
        return x + y

    assert add.delay(2, 3).get(timeout=5) == 5
    assert app.prepare_message("eager.add", (1, 1)).message.headers[KEY_ID_HEADER] == key_id(KEY)


def test_a_signed_message_survives_the_broker_and_a_redelivery(make_broker):  # noqa: F811
    broker: Broker = make_broker()
    queue = f"sig-{secrets.token_hex(4)}"
    sent = signed()
    broker.publish(Publication(sent, Route(queue)))
    [first] = broker.fetch([queue], 1, timeout=5)
    verify_message(first.message, RING)
    broker.requeue(first)
    [again] = broker.fetch([queue], 1, timeout=5)
    assert again.delivery_count == 2
    verify_message(again.message, RING)
    broker.ack([again])
