"""Broadcast over Redis as kombu lays it out: fanout exchanges are PUB/SUB channels.

A publish to fanout exchange ``x`` is ``PUBLISH <prefix>/<db>.x <envelope>`` (``/<db>.x/<key>``
with a routing key); consumers ``PSUBSCRIBE`` those channels (PROTOCOL.md §2.3). Nothing is
stored: a worker that is not subscribed when the message is published never sees it, and a
delivery cannot be given back to Redis (a requeue keeps it in this process; at most once, as in
Celery). With a node name (``worker_hostname``), the processes of one worker share one copy: the
first to claim ``celeriac.bcast.<node>.<delivery tag>`` runs it.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections import deque
from typing import Any

import redis

from celeriac.brokers.base import Delivery
from celeriac.exceptions import BrokerError
from celeriac.routing import Topology
from celeriac.transports.redis.envelope import decode_envelope

logger = logging.getLogger("celeriac.broker.redis")

#: How long a node remembers that it took a broadcast message (s).
_CLAIM_TTL = 3600


def fanout_channel(prefix: str, db: int, exchange: str, routing_key: str = "") -> str:
    """kombu's channel for a fanout publish (``fanout_prefix`` and ``fanout_patterns`` on)."""
    tail = f"/{routing_key}" if routing_key else ""
    return f"{prefix}/{db}.{exchange}{tail}"


class FanoutSubscriber:
    """This process's subscription to the broadcast queues it consumes."""

    def __init__(self, client: redis.Redis, prefix: str, db: int, topology: Topology) -> None:
        self.client, self.prefix, self.db, self.topology = client, prefix, db, topology
        self._pubsub: Any = None
        self._by_channel: dict[str, str] = {}  # pattern -> broadcast queue name
        self._pending: deque[tuple[float, Delivery]] = deque()  # given back by requeue
        self._lock = threading.Lock()

    def subscribe(self, queues: list[str]) -> None:
        new = [q for q in queues if q not in self._by_channel.values()]
        if not new:
            return
        patterns: dict[str, str] = {}
        for q in new:
            exchange = self.topology.queues[q].bound_to.name
            base = fanout_channel(self.prefix, self.db, exchange)
            patterns[base] = q
            patterns[base + "/*"] = q  # a producer that adds a routing key
        try:
            if self._pubsub is None:
                self._pubsub = self.client.pubsub(  # type: ignore[no-untyped-call]
                    ignore_subscribe_messages=True
                )
            self._pubsub.psubscribe(*patterns)
        except redis.RedisError as exc:
            raise BrokerError(f"Redis broker: subscribing to {new} failed: {exc}") from exc
        self._by_channel.update(patterns)

    def drain(self, limit: int, timeout: float = 0.0) -> list[Delivery]:
        """Broadcast deliveries for this process, waiting up to ``timeout`` for the first."""
        out_d: list[Delivery] = []
        now = time.time()
        with self._lock:
            keep: deque[tuple[float, Delivery]] = deque()
            while self._pending:
                due, d = self._pending.popleft()
                if due <= now and len(out_d) < limit:
                    out_d.append(d)
                else:
                    keep.append((due, d))
            self._pending = keep
        if self._pubsub is None:
            return out_d
        wait = timeout if not out_d else 0.0
        while len(out_d) < limit:
            try:
                msg = self._pubsub.get_message(timeout=wait)
            except redis.RedisError as exc:
                raise BrokerError(f"Redis broker: reading broadcasts failed: {exc}") from exc
            if msg is None:
                break
            wait = 0.0
            if msg.get("type") != "pmessage":
                continue
            pattern = msg["pattern"]
            if isinstance(pattern, bytes):
                pattern = pattern.decode()
            queue = self._by_channel.get(pattern)
            raw = msg["data"]
            if queue is None:
                continue
            try:
                message = decode_envelope(raw)
                tag = str(json.loads(raw)["properties"].get("delivery_tag") or "")
            except ValueError as exc:
                logger.error("dropped an unreadable broadcast on %r: %s", queue, exc)
                continue
            if not self._claim(tag):
                continue
            out_d.append(Delivery(message, queue, ("bcast", raw), 1))
        return out_d

    def _claim(self, tag: str) -> bool:
        node = self.topology.node
        if not node or not tag:
            return True
        key = f"{self.prefix}celeriac.bcast.{node}.{tag}"
        try:
            return bool(self.client.set(key, "1", nx=True, ex=_CLAIM_TTL))
        except redis.RedisError as exc:
            raise BrokerError(f"Redis broker: claiming a broadcast failed: {exc}") from exc

    def give_back(self, delivery: Delivery, due: float | None) -> None:
        with self._lock:
            self._pending.append((due or 0.0, delivery))

    def close(self) -> None:
        if self._pending:
            logger.warning("%d broadcast message(s) given back are dropped", len(self._pending))
        if self._pubsub is not None:
            self._pubsub.close()
            self._pubsub = None


def is_broadcast(delivery: Delivery) -> bool:
    tag = delivery.tag
    return isinstance(tag, tuple) and len(tag) == 2 and tag[0] == "bcast"
