"""Events over RabbitMQ as Celery sends them (PROTOCOL.md §3.5).

The topic exchange ``celeryev`` (durable); each message carries a JSON body, the application
header ``hostname`` and ``delivery_mode`` 1. A subscriber gets a queue ``celeryev.<uuid>`` of its
own (not durable, auto-delete, exclusive, ``x-message-ttl`` 5 s and ``x-expires`` 60 s, as
Celery's monitors declare it) bound with each of its patterns.

Publishing and each subscription use a py-amqp connection of their own, without heartbeats (a
worker publishes at least every heartbeat interval; a subscriber reads whenever it is asked to),
guarded by a lock: events are few, and the consuming connection's thread stays out of it.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import uuid
from collections.abc import Sequence
from typing import Any

import amqp

from celeriac.events.channel import EXCHANGE, Event, EventChannel, Subscription, unpack, wire_form
from celeriac.exceptions import BrokerError
from celeriac.transports.amqp.options import AMQPOptions
from celeriac.transports.amqp.urls import connect_params

logger = logging.getLogger("celeriac.events")

#: Celery's ``event_queue_ttl`` and ``event_queue_expires`` (s).
QUEUE_TTL, QUEUE_EXPIRES = 5.0, 60.0
#: s a socket read or write may take before the connection is given up
_IO_TIMEOUT = 10.0


def _open(url: str, options: AMQPOptions | None, role: str) -> tuple[amqp.Connection, Any]:
    conn = amqp.Connection(
        **connect_params(url, options, heartbeat=False),
        client_properties={"connection_name": f"celeriac pid {os.getpid()} events {role}"},
    )
    try:
        conn.connect()
        conn.transport.sock.settimeout(_IO_TIMEOUT)
        channel = conn.channel()
        channel.exchange_declare(EXCHANGE, "topic", durable=True, auto_delete=False)
    except BaseException:
        conn.collect()
        raise
    return conn, channel


def _drop(conn: amqp.Connection | None) -> None:
    if conn is None:
        return
    try:
        conn.transport.sock.settimeout(1.0)
        conn.close()
    except Exception as exc:  # it was going anyway
        logger.debug("AMQP events: closing a connection: %r", exc)
    finally:
        conn.collect()


class AMQPSubscription(Subscription):
    def __init__(self, url: str, options: AMQPOptions | None, patterns: Sequence[str]) -> None:
        super().__init__(patterns)
        self._events: list[Event] = []
        self.queue = f"celeryev.{uuid.uuid4()}"
        try:
            self._conn, channel = _open(url, options, "monitor")
            channel.queue_declare(
                self.queue,
                durable=False,
                auto_delete=True,
                exclusive=True,
                arguments={
                    "x-message-ttl": int(QUEUE_TTL * 1000),
                    "x-expires": int(QUEUE_EXPIRES * 1000),
                },
            )
            for pattern in self.patterns:
                channel.queue_bind(self.queue, EXCHANGE, pattern)
            channel.basic_consume(self.queue, no_ack=True, callback=self._on_message)
        except (OSError, amqp.exceptions.AMQPError) as exc:
            raise BrokerError(f"RabbitMQ events: subscribing failed: {exc}") from exc

    def _on_message(self, msg: amqp.Message) -> None:
        key = str(msg.delivery_info.get("routing_key", ""))
        if not self.wanted(key):
            return
        try:
            body = msg.body
            self._events.extend(unpack(json.loads(body)))
        except ValueError as exc:
            logger.warning("dropped an unreadable event message on %s: %s", key, exc)

    def receive(self, timeout: float) -> list[Event]:
        conn = self._conn
        if conn is None:
            raise BrokerError("RabbitMQ events: the subscription is closed")
        wait: float | None = max(0.001, timeout)
        try:
            while True:
                try:
                    conn.drain_events(timeout=wait)
                except TimeoutError:
                    break
                wait = 0.001  # take what else is there already, then return
        except (OSError, amqp.exceptions.AMQPError) as exc:
            raise BrokerError(f"RabbitMQ events: reading failed: {exc}") from exc
        out, self._events = self._events, []
        return out

    def close(self) -> None:
        conn, self._conn = self._conn, None
        _drop(conn)


class AMQPEventChannel(EventChannel):
    def __init__(self, url: str, options: AMQPOptions | None = None) -> None:
        super().__init__()
        self.url, self.options = url, options
        self._lock = threading.Lock()
        self._conn: amqp.Connection | None = None
        self._channel: Any = None

    def publish(self, events: Sequence[Event], *, grouped: bool = False) -> None:
        key, body = wire_form(events, grouped)
        message = amqp.Message(
            json.dumps(body),
            content_type="application/json",
            content_encoding="utf-8",
            application_headers={"hostname": str(events[0].get("hostname", ""))},
            delivery_mode=1,
        )
        with self._lock:
            try:
                if self._channel is None:
                    self._conn, self._channel = _open(self.url, self.options, "publish")
                self._channel.basic_publish(message, exchange=EXCHANGE, routing_key=key)
            except (OSError, amqp.exceptions.AMQPError) as exc:
                conn, self._conn, self._channel = self._conn, None, None
                _drop(conn)
                raise BrokerError(f"RabbitMQ events: publishing failed: {exc}") from exc

    def subscribe(self, patterns: Sequence[str] = ("#",)) -> Subscription:
        return AMQPSubscription(self.url, self.options, patterns)

    def _close(self) -> None:
        with self._lock:
            conn, self._conn, self._channel = self._conn, None, None
        _drop(conn)
