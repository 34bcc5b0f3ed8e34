"""Events over Redis as Celery sends them: kombu's fanout PUB/SUB (PROTOCOL.md §2.8).

A batch is one ``PUBLISH <prefix>/<db>.celeryev/<routing key> <kombu envelope>``; a subscriber
``PSUBSCRIBE``s ``<prefix>/<db>.celeryev/<pattern>`` with ``#`` read as ``*`` (kombu does the
same; Redis globs know no words), and the exact topic match is done here. Nothing is stored.
"""

from __future__ import annotations

import base64
import json
import logging
import time
import uuid
from collections.abc import Sequence
from typing import Any

import redis

from celeriac.events.channel import (
    EXCHANGE,
    Event,
    EventChannel,
    Subscription,
    unpack,
    wire_form,
)
from celeriac.exceptions import BrokerError
from celeriac.transports.redis.fanout import fanout_channel

logger = logging.getLogger("celeriac.events")


def event_envelope(key: str, body: Event | list[Event], hostname: str) -> str:
    """kombu's envelope for an event message: JSON body, ``hostname`` header, not persistent."""
    data = json.dumps(body).encode("utf-8")
    return json.dumps(
        {
            "body": base64.b64encode(data).decode("ascii"),
            "content-encoding": "utf-8",
            "content-type": "application/json",
            "headers": {"hostname": hostname},
            "properties": {
                "delivery_mode": 1,
                "delivery_info": {"exchange": EXCHANGE, "routing_key": key},
                "priority": 0,
                "body_encoding": "base64",
                "delivery_tag": str(uuid.uuid4()),
            },
        }
    )


def read_envelope(raw: bytes | str) -> Any:
    """The decoded JSON body of an event envelope; ``ValueError`` when it is not one."""
    env = json.loads(raw)
    if not isinstance(env, dict) or not isinstance(env.get("body"), str):
        raise ValueError("not a kombu envelope")
    if str(env.get("content-type") or "application/json") != "application/json":
        raise ValueError(f"events must be JSON, not {env.get('content-type')}")
    props = env.get("properties") or {}
    body = env["body"]
    data = base64.b64decode(body) if props.get("body_encoding") == "base64" else body.encode()
    return json.loads(data)


class RedisSubscription(Subscription):
    def __init__(self, client: redis.Redis, base: str, patterns: Sequence[str]) -> None:
        super().__init__(patterns)
        self._base = base
        self._pubsub: Any = client.pubsub(ignore_subscribe_messages=True)  # type: ignore[no-untyped-call]
        try:
            self._pubsub.psubscribe(*{f"{base}/{p.replace('#', '*')}" for p in self.patterns})
        except redis.RedisError as exc:
            self._pubsub.close()
            raise BrokerError(f"Redis events: subscribing failed: {exc}") from exc

    def receive(self, timeout: float) -> list[Event]:
        out: list[Event] = []
        deadline = time.monotonic() + max(0.0, timeout)
        while True:
            # Once something arrived, only what is there already; a subscribe confirmation
            # also reads as None, so keep waiting until the deadline.
            wait = 0.0 if out else deadline - time.monotonic()
            try:
                msg = self._pubsub.get_message(timeout=max(0.0, wait))
            except redis.RedisError as exc:
                raise BrokerError(f"Redis events: reading failed: {exc}") from exc
            if msg is None:
                if out or time.monotonic() >= deadline:
                    return out
                continue
            if msg.get("type") != "pmessage":
                continue
            channel = msg["channel"]
            if isinstance(channel, bytes):
                channel = channel.decode()
            key = channel[len(self._base) + 1 :]
            if not self.wanted(key):
                continue
            try:
                out.extend(unpack(read_envelope(msg["data"])))
            except ValueError as exc:
                logger.warning("dropped an unreadable event message on %s: %s", channel, exc)

    def close(self) -> None:
        pubsub, self._pubsub = self._pubsub, None
        if pubsub is not None:
            pubsub.close()


class RedisEventChannel(EventChannel):
    def __init__(self, client: redis.Redis, prefix: str) -> None:
        super().__init__()
        self.client = client
        db = int(client.connection_pool.connection_kwargs.get("db", 0) or 0)
        self.base = fanout_channel(prefix, db, EXCHANGE)

    def publish(self, events: Sequence[Event], *, grouped: bool = False) -> None:
        key, body = wire_form(events, grouped)
        envelope = event_envelope(key, body, str(events[0].get("hostname", "")))
        try:
            self.client.publish(f"{self.base}/{key}", envelope)
        except redis.RedisError as exc:
            raise BrokerError(f"Redis events: publishing failed: {exc}") from exc

    def subscribe(self, patterns: Sequence[str] = ("#",)) -> Subscription:
        return RedisSubscription(self.client, self.base, patterns)
