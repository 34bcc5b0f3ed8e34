"""Task messages against the Celery 5.x messages captured in PROTOCOL.md §1.5 and §1.6."""

from __future__ import annotations

import datetime as dt
import json
import re
import zlib

import msgpack
import pytest

from celeriac.exceptions import ContentDisallowed, DecodeError
from celeriac.protocol.message import Message, build_task_message, decode_body, read_headers
from celeriac.protocol.serializers import default_registry
from tests.json_support import spelled_alike

JSON_ONLY = frozenset({"application/json"})
TASK_ID = "22222222-2222-2222-2222-222222222222"
# The captured call was made at 14:02:11.161325 UTC (eta = +30 s, expires = +120 s).
SENT_AT = dt.datetime(2026, 11, 25, 14, 2, 11, 161325, tzinfo=dt.timezone.utc).timestamp()

CAPTURED_HEADERS = {
    "lang": "py",
    "task": "tasks.add",
    "id": TASK_ID,
    "shadow": "add-shadow",
    "eta": "2026-11-25T14:02:41.161325+00:00",
    "expires": "2026-11-25T14:04:11.161325+00:00",
    "group": None,
    "group_index": None,
    "retries": 3,
    "timelimit": [60, 50],
    "root_id": TASK_ID,
    "parent_id": None,
    "argsrepr": "(4,)",
    "kwargsrepr": "{'y': 5}",
    "origin": "gen7660@vm",
    "ignore_result": False,
    "replaced_task_nesting": 0,
    "stamped_headers": None,
    "stamps": {},
    "x-custom": "v",
}
CAPTURED_PROPERTY_KEYS = {"correlation_id", "reply_to", "delivery_mode", "expiration", "priority"}
CAPTURED_BODY = (
    b'[[4], {"y": 5}, {"callbacks": null, "errbacks": null, "chain": null, "chord": null}]'
)
CAPTURED_V1_BODY = {
    "task": "tasks.add",
    "id": "eeeeeeee-0000-0000-0000-000000000001",
    "args": [2, 3],
    "kwargs": {},
    "group": None,
    "group_index": None,
    "retries": 0,
    "eta": "2026-11-25T14:05:35.588486+00:00",
    "expires": "2026-11-25T14:06:25.588486+00:00",
    "utc": True,
    "callbacks": None,
    "errbacks": None,
    "timelimit": [None, None],
    "taskset": None,
    "chord": None,
}


def captured_call(**overrides: object) -> Message:
    """``add.apply_async((4,), {'y': 5}, countdown=30, expires=120, priority=5, ...)``."""
    options: dict[str, object] = {
        "task_name": "tasks.add",
        "task_id": TASK_ID,
        "args": (4,),
        "kwargs": {"y": 5},
        "eta": SENT_AT + 30,
        "expires": SENT_AT + 120,
        "priority": 5,
        "retries": 3,
        "time_limit": 60,
        "soft_time_limit": 50,
        "shadow": "add-shadow",
        "extra_headers": {"x-custom": "v"},
        "now": SENT_AT,
    }
    options.update(overrides)
    return build_task_message(default_registry, **options)  # type: ignore[arg-type]


def test_v2_headers_match_celery_key_for_key() -> None:
    msg = captured_call()
    assert set(msg.headers) == set(CAPTURED_HEADERS)
    # origin names this process; every other header is exactly what Celery sent.
    assert re.fullmatch(r"gen\d+@.+", msg.headers["origin"])
    expected = {k: v for k, v in CAPTURED_HEADERS.items() if k != "origin"}
    assert {k: v for k, v in msg.headers.items() if k != "origin"} == expected


def test_v2_header_types() -> None:
    h = captured_call().headers
    assert isinstance(h["timelimit"], list)
    assert isinstance(h["retries"], int) and isinstance(h["ignore_result"], bool)
    for key in ("eta", "expires"):
        parsed = dt.datetime.fromisoformat(h[key])
        assert parsed.utcoffset() == dt.timedelta(0), key


def test_v2_properties_and_body(json_path: str) -> None:
    msg = captured_call()
    assert set(msg.properties) == CAPTURED_PROPERTY_KEYS
    assert msg.properties["correlation_id"] == TASK_ID
    assert msg.properties["expiration"] == "120000"  # relative, in milliseconds, a string
    assert msg.properties["priority"] == 5
    assert msg.properties["delivery_mode"] == 2
    assert isinstance(msg.properties["reply_to"], str)
    assert (msg.content_type, msg.content_encoding) == ("application/json", "utf-8")
    if json_path == "json":
        assert msg.body == CAPTURED_BODY  # kombu's bytes
    else:  # orjson: the same value, keys in the same order, spelled without kombu's spaces
        assert (
            msg.body
            == b'[[4],{"y":5},{"callbacks":null,"errbacks":null,"chain":null,"chord":null}]'
        )
        assert spelled_alike(msg.body) == CAPTURED_BODY.decode()


def test_top_level_call_defaults() -> None:
    msg = build_task_message(default_registry, task_name="tasks.ping", task_id="abc")
    h = msg.headers
    assert h["root_id"] == "abc" and h["parent_id"] is None
    assert h["eta"] is None and h["expires"] is None
    assert h["timelimit"] == [None, None]
    assert "expiration" not in msg.properties and "compression" not in h
    assert json.loads(msg.body) == [
        [],
        {},
        {"callbacks": None, "errbacks": None, "chain": None, "chord": None},
    ]


def test_expiration_in_the_past_is_clamped_to_zero() -> None:
    msg = captured_call(expires=SENT_AT - 5)
    assert msg.properties["expiration"] == "0"


def test_read_headers_v2() -> None:
    th = read_headers(captured_call(), default_registry, JSON_ONLY)
    assert (th.task, th.id, th.root_id, th.parent_id) == ("tasks.add", TASK_ID, TASK_ID, None)
    assert th.retries == 3
    assert th.eta == pytest.approx(SENT_AT + 30, abs=1e-6)
    assert th.expires == pytest.approx(SENT_AT + 120, abs=1e-6)
    assert (th.time_limit, th.soft_time_limit) == (60.0, 50.0)
    assert th.shadow == "add-shadow"
    assert th.extra == {"x-custom": "v"}
    assert th.v1_body is None


def test_read_headers_v1_captured_body() -> None:
    msg = Message(
        headers={},
        properties={"correlation_id": CAPTURED_V1_BODY["id"], "delivery_mode": 2, "priority": 0},
        body=json.dumps(CAPTURED_V1_BODY).encode(),
    )
    th = read_headers(msg, default_registry, JSON_ONLY)
    assert (th.task, th.id, th.retries) == ("tasks.add", "eeeeeeee-0000-0000-0000-000000000001", 0)
    eta = dt.datetime(2026, 11, 25, 14, 5, 35, 588486, tzinfo=dt.timezone.utc).timestamp()
    assert th.eta == pytest.approx(eta, abs=1e-6)
    assert th.expires == pytest.approx(eta + 50, abs=1e-6)
    assert (th.time_limit, th.soft_time_limit) == (None, None)
    args, kwargs, embed = decode_body(msg, th, default_registry, JSON_ONLY)
    assert (args, kwargs) == ([2, 3], {})
    assert embed == {"callbacks": None, "errbacks": None, "chain": None, "chord": None}


def test_v1_body_that_is_not_a_task_dict_is_a_decode_error() -> None:
    msg = Message(headers={}, properties={}, body=b"[1, 2]")
    with pytest.raises(DecodeError):
        read_headers(msg, default_registry, JSON_ONLY)


@pytest.mark.parametrize(
    ("serializer", "compression", "content_type"),
    [
        ("json", None, "application/json"),
        ("msgpack", None, "application/x-msgpack"),
        ("json", "gzip", "application/json"),
        ("msgpack", "gzip", "application/x-msgpack"),
    ],
)
def test_decode_body_round_trip(serializer: str, compression: str | None, content_type: str):
    msg = captured_call(serializer=serializer, compression=compression)
    assert msg.content_type == content_type
    accept = frozenset({content_type})
    th = read_headers(msg, default_registry, accept)
    args, kwargs, embed = decode_body(msg, th, default_registry, accept)
    assert (args, kwargs) == ([4], {"y": 5})
    assert embed == {"callbacks": None, "errbacks": None, "chain": None, "chord": None}


def test_gzip_is_kombus_zlib_stream() -> None:
    msg = captured_call(serializer="msgpack", compression="gzip")
    assert msg.headers["compression"] == "application/x-gzip"
    assert msg.content_encoding == "binary"
    assert msgpack.unpackb(zlib.decompress(msg.body), raw=False)[:2] == [[4], {"y": 5}]


def test_decode_body_reads_a_kombu_gzip_message() -> None:
    # What kombu puts on the wire for compression="gzip": zlib.compress of the JSON body.
    headers = {**CAPTURED_HEADERS, "compression": "application/x-gzip"}
    msg = Message(headers, {"correlation_id": TASK_ID}, zlib.compress(CAPTURED_BODY))
    th = read_headers(msg, default_registry, JSON_ONLY)
    assert decode_body(msg, th, default_registry, JSON_ONLY)[:2] == ([4], {"y": 5})


unpickled: list[str] = []


def _tripwire(value: str) -> str:
    unpickled.append(value)
    return value


class _Payload:
    def __reduce__(self) -> tuple[object, tuple[str]]:
        return (_tripwire, ("ran",))


def test_pickle_is_refused_unless_accepted() -> None:
    msg = captured_call(serializer="pickle", args=(_Payload(),))
    assert msg.content_type == "application/x-python-serialize"
    th = read_headers(msg, default_registry, JSON_ONLY)  # headers need no decoding
    with pytest.raises(ContentDisallowed):
        decode_body(msg, th, default_registry, JSON_ONLY)
    assert unpickled == []  # refused before a byte was unpickled
    pickled = frozenset({"application/x-python-serialize"})
    assert decode_body(msg, th, default_registry, pickled)[0] == ["ran"]
    assert unpickled == ["ran"]


@pytest.mark.parametrize(
    ("body", "headers"),
    [
        (b'[[4], {"y": ', {}),  # truncated JSON
        (b'{"args": [4]}', {}),  # not [args, kwargs, embed]
        (b'["4", {}, {}]', {}),  # args not a list
        (b"not zlib at all", {"compression": "application/x-gzip"}),
    ],
)
def test_broken_body_is_a_decode_error(body: bytes, headers: dict[str, str]) -> None:
    msg = Message({**CAPTURED_HEADERS, **headers}, {"correlation_id": TASK_ID}, body)
    th = read_headers(msg, default_registry, JSON_ONLY)
    with pytest.raises(DecodeError):
        decode_body(msg, th, default_registry, JSON_ONLY)
