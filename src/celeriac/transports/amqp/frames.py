"""A task message as the bytes of its ``basic.publish`` frames (AMQP 0-9-1 §4.2, §2.3.5): no
I/O.

py-amqp encodes each message through its general ``dumps`` and ``GenericContent`` machinery: a
confirmed ``delay()`` spent a quarter of its CPU there (``bench/amqp_publish.py`` under
py-spy), most of it on the Celery headers table. Here the method, content header and body
frames of one message are built in one pass, into one buffer written with one ``sendall``.
The bytes are py-amqp's own for every value it encodes (``tests/.../test_frames.py`` compares
them), so consumers (Celery's, ours) read the same message. A value this encoder does not
take (a ``Decimal``, a ``datetime``, a property we do not set) raises :class:`Unsupported`,
and the caller lets py-amqp encode that message.
"""

from __future__ import annotations

import struct
from collections.abc import Mapping
from typing import Any

_HEADER = struct.Struct(">BHI")
#: ``basic.publish``: class 60, method 40, then ticket 0
_PUBLISH = struct.pack(">HHH", 60, 40, 0)
_CONTENT = struct.Struct(">HHQH")  # class 60, weight 0, body size, property flags
_END = b"\xce"
_I32 = struct.Struct(">I")
_TYPED_INT = struct.Struct(">ci")
_TYPED_LONG = struct.Struct(">cq")
_TYPED_DOUBLE = struct.Struct(">cd")
_INT_MAX = 2147483647

#: the Basic class's properties we set, in wire order, with their flag bit and kind
_PROPERTIES = (
    ("content_type", 1 << 15, "s"),
    ("content_encoding", 1 << 14, "s"),
    ("application_headers", 1 << 13, "F"),
    ("delivery_mode", 1 << 12, "o"),
    ("priority", 1 << 11, "o"),
    ("correlation_id", 1 << 10, "s"),
    ("reply_to", 1 << 9, "s"),
    ("expiration", 1 << 8, "s"),
)
_KNOWN = frozenset(name for name, _, _ in _PROPERTIES)


class Unsupported(Exception):
    """A value or property this encoder does not take: let py-amqp encode the message."""


def publish_frames(
    channel: int,
    frame_max: int,
    exchange: str,
    routing_key: str,
    mandatory: bool,
    body: bytes,
    properties: Mapping[str, Any],
) -> bytes:
    """The frames of one ``basic.publish`` with its content, ready to write.

    Raises :class:`struct.error` for a short string over 255 bytes (an exchange, a routing
    key, a header name), as py-amqp does, and :class:`Unsupported`.
    """
    out = bytearray()
    method = bytearray(_PUBLISH)
    _short(method, exchange)
    _short(method, routing_key)
    method.append(1 if mandatory else 0)
    _frame(out, 1, channel, method)

    flags = 0
    props = bytearray()
    for name in properties:
        if name not in _KNOWN:
            raise Unsupported(f"property {name!r}")
    for name, bit, kind in _PROPERTIES:
        value = properties.get(name)
        if value is None:
            continue
        flags |= bit
        if kind == "s":
            _short(props, value)
        elif kind == "o":
            props.append(value)  # ValueError past 255, as struct's error in py-amqp
        else:
            _table(props, value)
    header = bytearray(_CONTENT.pack(60, 0, len(body), flags))
    header += props
    _frame(out, 2, channel, header)
    chunk = frame_max - 8
    for start in range(0, len(body), chunk):
        _frame(out, 3, channel, body[start : start + chunk])
    return bytes(out)


def _frame(out: bytearray, kind: int, channel: int, payload: bytes | bytearray) -> None:
    out += _HEADER.pack(kind, channel, len(payload))
    out += payload
    out += _END


def _short(out: bytearray, value: str | bytes) -> None:
    data = value.encode("utf-8", "surrogatepass") if isinstance(value, str) else value
    out += struct.pack("B", len(data))  # struct.error past 255
    out += data


#: Header names as short strings, encoded once: a Celery message repeats the same twenty.
_NAMES: dict[str, bytes] = {}
_NAMES_MAX = 1024  # names come from users too: the cache stops growing here


def _name(key: Any) -> bytes:
    data = key.encode("utf-8", "surrogatepass") if isinstance(key, str) else key
    encoded = struct.pack("B", len(data)) + data  # struct.error past 255
    if type(key) is str and len(_NAMES) < _NAMES_MAX:
        _NAMES[key] = encoded
    return encoded


def _table(out: bytearray, table: Mapping[Any, Any]) -> None:
    at = len(out)
    out += b"\0\0\0\0"  # its size, filled in below
    names = _NAMES
    for key, value in table.items():
        # get() on a str subclass may find the str's entry: the same bytes, as encode() gives
        out += names.get(key) or _name(key)
        if value is None:  # first: most Celery headers are None
            out += b"V"
        else:
            _value(out, value)
    _I32.pack_into(out, at, len(out) - at - 4)


def _array(out: bytearray, values: list[Any] | tuple[Any, ...]) -> None:
    at = len(out)
    out += b"\0\0\0\0"
    for value in values:
        _value(out, value)
    _I32.pack_into(out, at, len(out) - at - 4)


def _value(out: bytearray, value: Any) -> None:
    # Checked in py-amqp's order, so a value gets the type it would: bool before int.
    kind = type(value)
    if kind is str or kind is bytes:
        data = value.encode("utf-8", "surrogatepass") if kind is str else value
        out += b"S"
        out += _I32.pack(len(data))
        out += data
    elif kind is bool:
        out += b"t\x01" if value else b"t\x00"
    elif kind is float:
        out += _TYPED_DOUBLE.pack(b"d", value)
    elif kind is int:
        if -_INT_MAX <= value <= _INT_MAX:
            out += _TYPED_INT.pack(b"I", value)
        else:
            out += _TYPED_LONG.pack(b"L", value)
    elif kind is dict:
        out += b"F"
        _table(out, value)
    elif kind is list or kind is tuple:
        out += b"A"
        _array(out, value)
    elif value is None:
        out += b"V"
    else:  # a subclass, a Decimal, a datetime: py-amqp's own rules
        raise Unsupported(f"a header value of type {kind.__name__}")
