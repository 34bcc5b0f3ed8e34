"""Remote control over Redis as kombu lays it out (PROTOCOL.md §2.7).

* Commands: ``PUBLISH <prefix>/<db>.celery.pidbox <envelope>``; nodes ``PSUBSCRIBE`` it (pub/sub:
  a node that is not subscribed when a command goes out never sees it, as with Celery).
* Replies: the client adds ``<oid>\\x06\\x16\\x06\\x16<oid>.reply.celery.pidbox`` to the set
  ``_kombu.binding.reply.celery.pidbox`` and pops the list ``<oid>.reply.celery.pidbox``; a node
  finds the list through that set and ``LPUSH``es its reply there.

Envelopes are kombu's (base64 JSON body, ``delivery_info`` naming the exchange).
"""

from __future__ import annotations

import base64
import json
import logging
import uuid
from typing import Any

import redis

from celeriac.control.mailbox import EXCHANGE, REPLY_EXCHANGE, Mailbox, Raw
from celeriac.exceptions import BrokerError
from celeriac.transports.redis.connection import RedisTarget
from celeriac.transports.redis.fanout import fanout_channel

logger = logging.getLogger("celeriac.control")

SEP = "\x06\x16"
#: ms a reply list is kept when its client is gone (kombu's reply queues expire after 10 s).
_REPLY_TTL_MS = 60_000


def envelope(
    body: dict[str, Any], headers: dict[str, Any], exchange: str, key: str, mode: int
) -> str:
    return json.dumps(
        {
            "body": base64.b64encode(json.dumps(body).encode()).decode("ascii"),
            "content-encoding": "utf-8",
            "content-type": "application/json",
            "headers": headers,
            "properties": {
                "delivery_mode": mode,
                "delivery_info": {"exchange": exchange, "routing_key": key},
                "priority": 0,
                "body_encoding": "base64",
                "delivery_tag": str(uuid.uuid4()),
            },
        }
    )


def open_envelope(raw: bytes | str) -> Raw:
    """The JSON body and headers of a kombu envelope; ``ValueError`` when it is not one."""
    env = json.loads(raw)
    if not isinstance(env, dict):
        raise ValueError("not an envelope")
    if env.get("content-type", "application/json") != "application/json":
        raise ValueError(f"content type {env.get('content-type')!r} (JSON only)")
    data = env.get("body") or ""
    props = env.get("properties") or {}
    if props.get("body_encoding") == "base64":
        data = base64.b64decode(data)
    body = json.loads(data)
    headers = env.get("headers") or {}
    if not isinstance(body, dict) or not isinstance(headers, dict):
        raise ValueError("body or headers not an object")
    return body, headers


class RedisMailbox(Mailbox):
    def __init__(self, target: RedisTarget) -> None:
        super().__init__()
        self.client, self.prefix = target.client, target.prefix
        db = int(self.client.connection_pool.connection_kwargs.get("db", 0) or 0)
        self.channel = fanout_channel(self.prefix, db, EXCHANGE)
        self._binding = f"{self.prefix}_kombu.binding.{REPLY_EXCHANGE}"
        self._pubsub: Any = None

    def _call(self, what: str, fn: Any, *args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except redis.RedisError as exc:
            raise BrokerError(f"Redis remote control: {what} failed: {exc}") from exc

    # -- the worker's side -----------------------------------------------------------------------
    def _listen(self, node: str) -> None:
        self._pubsub = self.client.pubsub(ignore_subscribe_messages=True)  # type: ignore[no-untyped-call]
        self._call("subscribing", self._pubsub.psubscribe, self.channel, self.channel + "/*")

    def _receive(self, timeout: float) -> list[Raw]:
        out: list[Raw] = []
        wait = timeout
        while True:
            msg = self._call("reading commands", self._pubsub.get_message, timeout=wait)
            if msg is None:
                return out
            wait = 0.0
            if msg.get("type") != "pmessage":
                continue
            try:
                out.append(open_envelope(msg["data"]))
            except (ValueError, TypeError) as exc:
                logger.warning("dropped an unreadable remote-control message: %s", exc)

    def _reply(self, oid: str, body: dict[str, Any], headers: dict[str, Any]) -> None:
        members = self._call("reading bindings", self.client.smembers, self._binding)
        queues = []
        for member in members:
            text = member.decode() if isinstance(member, bytes) else str(member)
            key, _, queue = text.split(SEP, 2) if text.count(SEP) >= 2 else (text, "", "")
            if key == oid and queue:
                queues.append(queue)
        raw = envelope(body, headers, REPLY_EXCHANGE, oid, 1)
        pipe = self.client.pipeline()
        for queue in queues or [f"{oid}.{REPLY_EXCHANGE}"]:
            pipe.lpush(self.prefix + queue, raw)
            pipe.pexpire(self.prefix + queue, _REPLY_TTL_MS)
        self._call("replying", pipe.execute)

    # -- the client's side -----------------------------------------------------------------------
    def _reply_key(self, oid: str) -> str:
        return f"{self.prefix}{oid}.{REPLY_EXCHANGE}"

    def _publish(self, body: dict[str, Any], headers: dict[str, Any]) -> None:
        raw = envelope(body, headers, EXCHANGE, "", 2)
        self._call("broadcasting", self.client.publish, self.channel, raw)

    def _open_replies(self, oid: str) -> None:
        member = f"{oid}{SEP}{SEP}{oid}.{REPLY_EXCHANGE}"
        self._call("binding the reply queue", self.client.sadd, self._binding, member)

    def _replies(self, oid: str, timeout: float) -> list[Raw]:
        key = self._reply_key(oid)
        got = self._call("reading replies", self.client.brpop, [key], timeout=max(0.01, timeout))
        if not got:
            return []
        items = [got[1]]
        while True:
            more = self._call("reading replies", self.client.rpop, key)
            if more is None:
                break
            items.append(more)
        out = []
        for raw in items:
            try:
                out.append(open_envelope(raw))
            except (ValueError, TypeError) as exc:
                logger.warning("dropped an unreadable remote-control reply: %s", exc)
        return out

    def _close_replies(self, oid: str) -> None:
        member = f"{oid}{SEP}{SEP}{oid}.{REPLY_EXCHANGE}"
        pipe = self.client.pipeline()
        pipe.srem(self._binding, member)
        pipe.delete(self._reply_key(oid))
        self._call("unbinding the reply queue", pipe.execute)

    def _close(self) -> None:
        if self._pubsub is not None:
            self._pubsub.close()
            self._pubsub = None
