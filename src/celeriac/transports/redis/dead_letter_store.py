"""Reading and purging the Redis broker's dead letters (a sorted set of JSON documents, written
by ``broker.lua``'s ``dead``, which also trims it to the caps)."""

from __future__ import annotations

import binascii
import json
from typing import Any

import redis

from celeriac.brokers.base import DeadLetter
from celeriac.exceptions import BrokerError
from celeriac.protocol.message import Message
from celeriac.transports.redis.envelope import decode_envelope


def key(prefix: str) -> str:
    return f"{prefix}celeriac.dead"


def read(client: redis.Redis, prefix: str, limit: int) -> list[DeadLetter]:
    """The oldest ``limit`` dead letters; one whose envelope cannot be read keeps its bytes."""
    try:
        docs: Any = client.zrange(key(prefix), 0, max(0, limit - 1))
    except redis.RedisError as exc:
        raise BrokerError(f"Redis broker: reading dead letters failed: {exc}") from exc
    out = []
    for raw in docs[:limit]:
        doc = json.loads(raw.decode("utf-8", "surrogateescape"))
        envelope = doc["envelope"]
        try:
            message = decode_envelope(envelope)
        except (ValueError, binascii.Error):  # kept as it came off the wire
            message = Message({}, {}, envelope.encode("utf-8", "surrogateescape"), "", "")
        out.append(
            DeadLetter(
                id=int(doc["id"]),
                queue=doc["queue"],
                reason=doc["reason"],
                failed_at=float(doc["failed_at"]),
                message=message,
            )
        )
    return out


def purge(client: redis.Redis, prefix: str) -> int:
    """Delete every dead letter; how many there were."""
    try:
        with client.pipeline() as pipe:
            pipe.zcard(key(prefix))
            pipe.delete(key(prefix))
            n, _ = pipe.execute()
    except redis.RedisError as exc:
        raise BrokerError(f"Redis broker: purging dead letters failed: {exc}") from exc
    return int(n)
