"""Property tests: whatever bytes or envelope a worker is handed, decoding it ends in a
Celeriac error (celeriac.exceptions) or a message, never in another exception, a hang, or
memory that grows with what the message claims.

Covered: the task message decoder (read_headers, decode_body, the serializers and the bounded
decompression), kombu's Redis envelope, AMQP deliveries (to_message, to_dead_letter) and SQLite
rows. Bounded for CI: a fixed seed, 300 examples per property and a deadline per example. Cases
found are kept below as explicit examples.
"""

from __future__ import annotations

import base64
import bz2
import json
import resource
import zlib
from datetime import timedelta
from typing import Any

import amqp
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from celeriac.exceptions import CeleriacError, MessageTooLarge
from celeriac.protocol.message import Message, decode_body, read_headers
from celeriac.protocol.serializers import default_registry
from celeriac.transports.amqp.wire import to_dead_letter, to_message
from celeriac.transports.redis.envelope import decode_envelope
from celeriac.transports.sqlite.rows import message_of

pytestmark = pytest.mark.timeout(120)

ACCEPT = default_registry.content_types(["json", "msgpack"])
LIMIT = 1024 * 1024
FUZZ = settings(
    max_examples=300,
    deadline=timedelta(seconds=2),
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)

CONTENT_TYPES = st.sampled_from(
    [
        "application/json",
        "application/x-msgpack",
        "application/x-python-serialize",  # not accepted: refused before it is read
        "application/yaml",
        "text/plain",
        "",
    ]
) | st.text(max_size=20)
COMPRESSIONS = st.sampled_from(
    [None, "application/x-zlib", "application/x-gzip", "application/x-bz2", "application/x-lzma"]
) | st.text(max_size=12)
HUGE = st.sampled_from([10**400, -(10**400), 2**63, float("inf"), float("-inf"), float("nan")])
SCALARS = (
    st.none()
    | st.booleans()
    | st.integers()
    | HUGE
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=30)
)
JSONISH = st.recursive(
    SCALARS,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)
HEADER_KEYS = [
    "task",
    "id",
    "root_id",
    "parent_id",
    "group",
    "group_index",
    "retries",
    "eta",
    "expires",
    "timelimit",
    "shadow",
    "origin",
    "ignore_result",
    "compression",
    "argsrepr",
    "stamps",
]
HEADERS = st.dictionaries(st.sampled_from(HEADER_KEYS) | st.text(max_size=8), JSONISH, max_size=10)


def deep(n: int) -> str:
    return "[" * n + "]" * n


def decode_task(message: Message) -> None:
    """What a worker does with a message it fetched: headers, then the body."""
    headers = read_headers(message, default_registry, ACCEPT)
    decode_body(message, headers, default_registry, ACCEPT, max_size=LIMIT)


def only_typed_errors(fn: Any, *args: Any, **kwargs: Any) -> Any:
    try:
        return fn(*args, **kwargs)
    except CeleriacError:
        return None


@st.composite
def bodies(draw: st.DrawFn) -> tuple[bytes, str | None]:
    """Random bytes, or a task body made of hostile values, sometimes really compressed."""
    kind = draw(st.sampled_from(["bytes", "json", "zlib", "bz2"]))
    if kind == "bytes":
        return draw(st.binary(max_size=512)), draw(COMPRESSIONS)
    doc = draw(st.lists(JSONISH, max_size=4) | JSONISH)
    data = json.dumps(doc).encode()
    if kind == "zlib":
        return zlib.compress(data), "application/x-zlib"
    if kind == "bz2":
        return bz2.compress(data), "application/x-bz2"
    return data, None


def _bomb() -> bytes:
    enc = zlib.compressobj(9)
    return b"".join(enc.compress(bytes(1 << 20)) for _ in range(64)) + enc.flush()


BOMB = _bomb()  # 64 MiB of zeros in ~64 KB


@FUZZ
@given(headers=HEADERS, body=bodies(), ctype=CONTENT_TYPES)
@example(headers={"task": "t", "id": "1", "retries": float("inf")}, body=(b"[]", None), ctype="")
@example(headers={"task": "t", "id": "1", "expires": 10**400}, body=(b"[]", None), ctype="")
@example(headers={"task": "t", "id": "1", "eta": "9999-99"}, body=(b"[]", None), ctype="")
@example(headers={"task": "t", "id": "1", "compression": ["x"]}, body=(b"[]", None), ctype="")
@example(headers={}, body=(b'{"task": "t", "id": 1, "timelimit": 5}', None), ctype="")
@example(headers={}, body=(deep(100_000).encode(), None), ctype="application/json")
@example(headers={"task": "t", "id": "1"}, body=(BOMB, "application/x-zlib"), ctype="")
@example(headers={"task": "t", "id": "1"}, body=(b"x" * (LIMIT + 1), None), ctype="")
def test_task_messages_decode_or_raise_typed_errors(
    headers: dict[str, Any], body: tuple[bytes, str | None], ctype: str
) -> None:
    data, compression = body
    if compression is not None:
        headers = {**headers, "compression": compression}
    ctype = ctype or "application/json"
    only_typed_errors(decode_task, Message(headers, {}, data, ctype, "utf-8"))


def test_the_bomb_and_the_oversize_body_are_refused_for_their_size() -> None:
    for body, compression in ((BOMB, "application/x-zlib"), (b"x" * (LIMIT + 1), None)):
        headers = {"task": "t", "id": "1", **({"compression": compression} if compression else {})}
        with pytest.raises(MessageTooLarge):
            decode_task(Message(headers, {}, body, "application/json", "utf-8"))


@FUZZ
@given(raw=st.binary(max_size=512) | st.text(max_size=512))
@example(raw=deep(100_000))
@example(raw='{"properties": {"body_encoding": "base64"}, "body": "!!!"}')
@example(raw='{"properties": {}, "body": "x", "headers": [1]}')
def test_redis_envelopes_of_any_bytes(raw: bytes | str) -> None:
    message = only_typed_errors(decode_envelope, raw)
    if message is not None:
        only_typed_errors(decode_task, message)


@FUZZ
@given(
    headers=JSONISH | HEADERS,
    props=st.dictionaries(st.text(max_size=12), JSONISH, max_size=5),
    body=st.binary(max_size=200) | JSONISH,
    encoding=st.sampled_from(["base64", "utf-8", None]) | JSONISH,
    ctype=CONTENT_TYPES | JSONISH,
)
def test_structurally_valid_redis_envelopes_with_hostile_values(
    headers: Any, props: dict[str, Any], body: Any, encoding: Any, ctype: Any
) -> None:
    if isinstance(body, bytes):
        body = base64.b64encode(body).decode()
    env = {
        "body": body,
        "content-type": ctype,
        "headers": headers,
        "properties": {**props, "body_encoding": encoding},
    }
    message = only_typed_errors(decode_envelope, json.dumps(env))
    if message is not None:
        only_typed_errors(decode_task, message)


AMQP_HEADERS = st.dictionaries(
    st.sampled_from(
        [
            *HEADER_KEYS,
            "x-celeriac-count",
            "x-delivery-count",
            "x-celeriac-failed-at",
            "x-celeriac-dead-id",
            "x-celeriac-reason",
            "x-celeriac-queue",
        ]
    )
    | st.text(max_size=8),
    JSONISH | st.binary(max_size=16),
    max_size=10,
)


@FUZZ
@given(
    headers=AMQP_HEADERS,
    body=st.binary(max_size=300),
    ctype=st.text(max_size=20),
    priority=st.integers(0, 255),
)
@example(headers={"x-celeriac-count": float("inf")}, body=b"", ctype="", priority=0)
@example(headers={"x-celeriac-failed-at": "soon"}, body=b"", ctype="", priority=0)
@example(headers={"x-celeriac-failed-at": 10**400}, body=b"", ctype="", priority=0)
def test_amqp_deliveries_with_hostile_headers(
    headers: dict[str, Any], body: bytes, ctype: str, priority: int
) -> None:
    msg = amqp.Message(body, application_headers=headers, content_type=ctype, priority=priority)
    msg.delivery_info = {"routing_key": "q"}
    converted = only_typed_errors(to_message, msg)
    if converted is not None:
        only_typed_errors(decode_task, converted[0])
    only_typed_errors(to_dead_letter, msg)


SQL_VALUES = st.none() | st.integers() | st.floats() | st.text(max_size=40) | st.binary(max_size=40)


@FUZZ
@given(
    headers=SQL_VALUES | JSONISH.map(json.dumps),
    props=SQL_VALUES | JSONISH.map(json.dumps),
    ctype=SQL_VALUES,
    encoding=SQL_VALUES,
    body=SQL_VALUES,
)
@example(headers=deep(100_000), props="{}", ctype="", encoding="", body=b"")
def test_sqlite_rows_of_any_values(
    headers: Any, props: Any, ctype: Any, encoding: Any, body: Any
) -> None:
    message = only_typed_errors(message_of, headers, props, ctype, encoding, body)
    if message is not None:
        only_typed_errors(decode_task, message)


@FUZZ
@given(data=st.binary(max_size=1024), ctype=CONTENT_TYPES, compression=COMPRESSIONS)
def test_serializers_over_any_bytes(data: bytes, ctype: str, compression: str | None) -> None:
    only_typed_errors(default_registry.loads, data, ctype, ACCEPT, compression, max_size=LIMIT)


def test_memory_stayed_bounded() -> None:
    # Runs after the properties above in this module (same process): decoding the 64 MiB bomb
    # whole anywhere above would have raised the peak by that much.
    peak_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    assert peak_kib < 400 * 1024
