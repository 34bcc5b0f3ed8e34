"""Our ``basic.publish`` frames are py-amqp's, byte for byte, for every value we encode."""

from __future__ import annotations

import datetime
import decimal
import struct
from typing import Any

import amqp
import pytest
from amqp import spec
from amqp.method_framing import frame_writer

from celeriac import Celeriac
from celeriac.transports.amqp.frames import Unsupported, publish_frames
from celeriac.transports.amqp.wire import properties

FRAME_MAX = 4096


def py_amqp(exchange: str, key: str, mandatory: bool, body: bytes, props: dict[str, Any]) -> bytes:
    """What py-amqp writes for ``basic_publish`` (one ``write`` per frame when it splits)."""
    written: list[bytes] = []

    class Transport:
        def write(self, data: Any) -> None:
            written.append(bytes(data))

    conn = type("Conn", (), {"frame_max": FRAME_MAX, "bytes_sent": 0})()
    write = frame_writer(conn, Transport())
    args = amqp.serialization.dumps("Bssbb", (0, exchange, key, mandatory, False))
    write(1, 7, spec.Basic.Publish, args, amqp.Message(body, **props))
    return b"".join(written)


def celery_task_properties() -> dict[str, Any]:
    app = Celeriac("frames", broker="memory://")

    @app.task(name="t.add")
    def add(x: int, y: int) -> int:
        return x + y

    message = app.prepare_message("t.add", (2, 3), {}, _task=add).message
    return properties(message, priority=3, headers=dict(message.headers))


HEADERS = {
    "str": "é ü 漢",
    "bytes": b"\x00\xff",
    "true": True,
    "false": False,
    "float": 1.5,
    "small": -2147483647,
    "big": 2147483648,
    "negative big": -(2**40),
    "none": None,
    "list": [1, "a", None, [True, {"x": 1.0}]],
    "tuple": (1, 2),
    "nested": {"a": {"b": []}, "": ""},
}


@pytest.mark.parametrize(
    ("exchange", "key", "mandatory", "body", "props"),
    [
        ("", "celery", True, b"[[2, 3], {}, {}]", celery_task_properties()),
        ("ex", "rk", False, b"x" * (3 * FRAME_MAX + 5), {"application_headers": HEADERS}),
        ("", "q", True, b"", {"content_type": "", "delivery_mode": 1}),
        (
            "e",
            "k",
            True,
            b"body",
            {
                "content_type": "application/json",
                "content_encoding": "utf-8",
                "application_headers": {},
                "delivery_mode": 2,
                "priority": 255,
                "correlation_id": "c",
                "reply_to": "r",
                "expiration": "1000",
            },
        ),
    ],
)
def test_frames_are_py_amqps(
    exchange: str, key: str, mandatory: bool, body: bytes, props: dict[str, Any]
) -> None:
    ours = publish_frames(7, FRAME_MAX, exchange, key, mandatory, body, props)
    assert ours == py_amqp(exchange, key, mandatory, body, props)


@pytest.mark.parametrize(
    "props",
    [
        {"application_headers": {"d": decimal.Decimal("1.5")}},
        {"application_headers": {"t": datetime.datetime(2026, 1, 1)}},
        {"application_headers": {"l": [object()]}},
        {"message_id": "m"},  # a property we never set
    ],
)
def test_what_it_does_not_take_is_left_to_py_amqp(props: dict[str, Any]) -> None:
    with pytest.raises(Unsupported):
        publish_frames(1, FRAME_MAX, "", "q", True, b"", props)


def test_a_routing_key_too_long_fails_as_in_py_amqp() -> None:
    import struct

    with pytest.raises(struct.error):
        publish_frames(1, FRAME_MAX, "", "k" * 256, True, b"", {})


def test_header_names_are_encoded_once_and_the_cache_is_bounded() -> None:
    from celeriac.transports.amqp import frames

    class Name(str):
        pass

    many = {f"x-name-{i}": i for i in range(2 * frames._NAMES_MAX)}
    many[Name("task")] = "t.add"  # a subclass: the same bytes as its text
    props = {"content_type": "application/json", "application_headers": many}
    for _ in range(2):  # the second time from the cache
        assert publish_frames(7, FRAME_MAX, "", "q", False, b"{}", props) == py_amqp(
            "", "q", False, b"{}", props
        )
    assert len(frames._NAMES) <= frames._NAMES_MAX
    with pytest.raises(struct.error):  # a name past 255 bytes, as py-amqp refuses it
        publish_frames(7, FRAME_MAX, "", "q", False, b"", {"application_headers": {"n" * 256: 1}})
