"""kombu's Redis envelope: how a message is one JSON string in a Redis list (PROTOCOL.md §2.2).

Written key for key and in kombu's order, so a Celery worker reads ours and we read Celery's.
"""

from __future__ import annotations

import base64
from typing import Any

from celeriac.exceptions import DecodeError
from celeriac.protocol import fastjson
from celeriac.protocol.jsontext import encoder
from celeriac.protocol.message import Message
from celeriac.protocol.publication import Route

_dumps = fastjson.text_encoder(encoder())  # json.dumps's text, or orjson's for a plain value
#: Properties the envelope carries for the transport, not for the task.
_TRANSPORT_PROPERTIES = ("delivery_info", "body_encoding", "delivery_tag")


def encode_envelope(message: Message, route: Route, priority: int, tag: str) -> str:
    """kombu's Redis envelope, key for key and in kombu's order (PROTOCOL.md §2.2)."""
    props: dict[str, Any] = {}
    for key, value in message.properties.items():
        if key == "priority":
            continue
        props[key] = value
    # kombu records the exchange it was published to ("" and the queue's name: none)
    exchange, routing_key = route.address
    props["delivery_info"] = {"exchange": exchange, "routing_key": routing_key}
    props["priority"] = priority
    props["body_encoding"] = "base64"
    props["delivery_tag"] = tag
    return _dumps(
        {
            "body": base64.b64encode(message.body).decode("ascii"),
            "content-encoding": message.content_encoding,
            "content-type": message.content_type,
            "headers": message.headers,
            "properties": props,
        }
    )


class BadEnvelope(DecodeError, ValueError):
    """What a Redis list holds is not a kombu envelope (a ValueError too, for callers that
    handle any malformed input alike)."""


def decode_envelope(raw: bytes | str) -> Message:
    """A :class:`Message` from an envelope; :class:`BadEnvelope` when it is not one."""
    try:
        env = fastjson.loads(raw)
    except (ValueError, RecursionError) as exc:  # RecursionError: nested past Python's limit
        raise BadEnvelope(f"not a JSON envelope: {exc}") from None
    if not isinstance(env, dict) or not isinstance(env.get("properties"), dict):
        raise BadEnvelope("not a kombu envelope: no properties object")
    props = env["properties"]
    body = env.get("body")
    if not isinstance(body, str):
        raise BadEnvelope("envelope body is not a string")
    try:
        if props.get("body_encoding") == "base64":
            data = base64.b64decode(body, validate=True)
        else:
            data = body.encode("utf-8")
    except ValueError as exc:  # not base64; a lone surrogate that is not UTF-8
        raise BadEnvelope(f"envelope body does not decode: {exc}") from None
    headers = env.get("headers") or {}
    if not isinstance(headers, dict):
        raise BadEnvelope("envelope headers are not an object")
    properties = {k: v for k, v in props.items() if k not in _TRANSPORT_PROPERTIES}
    return Message(
        headers,
        properties,
        data,
        str(env.get("content-type") or "application/json"),
        str(env.get("content-encoding") or "utf-8"),
    )
