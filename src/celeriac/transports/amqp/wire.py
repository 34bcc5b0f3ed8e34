"""Task messages as AMQP messages and back (PROTOCOL.md §3.1), and our own headers.

Properties are by py-amqp's names (``application_headers`` for the headers); py-amqp writes a
float in a header table as a double, as Celery (py-amqp too) reads it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import amqp

from celeriac.brokers.base import DeadLetter
from celeriac.protocol.message import Message

#: deliveries so far, carried by a message a requeue republished
HDR_COUNT = "x-celeriac-deliveries"
HDR_REASON, HDR_QUEUE = "x-celeriac-reason", "x-celeriac-queue"
HDR_FAILED, HDR_DEAD_ID = "x-celeriac-failed-at", "x-celeriac-dead-id"
_DEAD_HEADERS = (HDR_REASON, HDR_QUEUE, HDR_FAILED, HDR_DEAD_ID)
#: Headers RabbitMQ adds on its own (dead-lettering, quorum redelivery): transport, not task.
_BROKER_HEADER_PREFIXES = ("x-death", "x-first-death-", "x-last-death-", "x-delivery-count")


@dataclass(frozen=True, slots=True)
class Tag:
    """A delivery's handle: the channel epoch, its delivery tag, RabbitMQ's redelivered flag."""

    epoch: int
    delivery_tag: int
    redelivered: bool
    #: RabbitMQ counts this queue's deliveries itself (``x-delivery-count``: quorum queues)
    counted: bool = False


def _int(value: Any) -> int:
    try:
        return int(value)
    except (TypeError, ValueError, OverflowError):  # overflow: a header of inf
        return 0


def _float(value: Any) -> float:
    try:
        return float(value or 0.0)
    except (TypeError, ValueError, OverflowError):  # overflow: an int past a float's range
        return 0.0


def to_message(msg: amqp.Message) -> tuple[Message, int, int | None]:
    """The :class:`Message` in an AMQP delivery, our carried count, and ``x-delivery-count``."""
    props: dict[str, Any] = msg.properties
    raw = dict(props.get("application_headers") or {})
    carried = _int(raw.pop(HDR_COUNT, 0))
    quorum_count = _int(raw["x-delivery-count"]) if "x-delivery-count" in raw else None
    headers = {k: v for k, v in raw.items() if not k.startswith(_BROKER_HEADER_PREFIXES)}
    properties: dict[str, Any] = {}
    if props.get("correlation_id") is not None:
        properties["correlation_id"] = props["correlation_id"]
    properties["reply_to"] = props.get("reply_to") or ""  # an empty shortstr is not sent at all
    if props.get("delivery_mode") is not None:
        properties["delivery_mode"] = props["delivery_mode"]
    properties["priority"] = props.get("priority") or 0
    if props.get("expiration") is not None:
        properties["expiration"] = props["expiration"]
    body = msg.body if isinstance(msg.body, bytes) else bytes(msg.body)
    message = Message(
        headers,
        properties,
        body,
        props.get("content_type") or "",
        props.get("content_encoding") or "utf-8",
    )
    return message, carried, quorum_count


def properties(
    message: Message, *, priority: int, headers: dict[str, Any], keep_expiration: bool = True
) -> dict[str, Any]:
    """AMQP properties for ``message`` (PROTOCOL.md §3.1)."""
    p = message.properties
    return {
        "content_type": message.content_type,
        "content_encoding": message.content_encoding,
        "application_headers": headers,
        "delivery_mode": int(p.get("delivery_mode") or 2),
        "priority": max(0, min(255, int(priority))),
        "correlation_id": p.get("correlation_id") or message.task_id,
        "reply_to": p.get("reply_to") or None,
        "expiration": p.get("expiration") if keep_expiration else None,
    }


def to_dead_letter(msg: amqp.Message) -> DeadLetter:
    """A message read from the dead-letter queue, with what :func:`dead_headers` put on it."""
    message, _, _ = to_message(msg)
    headers = message.headers
    info = {k: headers.pop(k, None) for k in _DEAD_HEADERS}
    return DeadLetter(
        id=_int(info[HDR_DEAD_ID]),
        queue=str(info[HDR_QUEUE] or msg.delivery_info.get("routing_key") or ""),
        reason=str(info[HDR_REASON] or ""),
        failed_at=_float(info[HDR_FAILED]),
        message=message,
    )


def dead_headers(
    headers: dict[str, Any], *, reason: str, queue: str, failed_at: float, dead_id: int, count: int
) -> dict[str, Any]:
    """``headers`` and why the message is dead: read back by :func:`to_dead_letter`."""
    return {
        **headers,
        HDR_REASON: reason,
        HDR_QUEUE: queue,
        HDR_FAILED: failed_at,
        HDR_DEAD_ID: dead_id,
        HDR_COUNT: count,
    }
