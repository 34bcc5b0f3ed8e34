"""Remote control over RabbitMQ as Celery declares it (PROTOCOL.md §3.4).

* Commands: the fanout exchange ``celery.pidbox`` (not durable); a node consumes its own queue
  ``<node>.celery.pidbox`` (not durable, exclusive, auto-delete, ``x-expires`` 10 s,
  ``x-message-ttl`` 300 s) bound to it.
* Replies: the direct exchange ``reply.celery.pidbox``; a client consumes
  ``<oid>.reply.celery.pidbox`` (same flags), bound with its oid as the routing key.

Bodies are raw JSON, headers AMQP application headers. Remote control is a trickle of small
messages, so a mailbox keeps one py-amqp connection of its own, used by one thread at a time
(the worker's remote-control thread, or one client call at a time), without heartbeats: the
worker's side reads it every second, and a broken connection is opened again on the next use.
"""

from __future__ import annotations

import json
import logging
from typing import Any

import amqp
import amqp.exceptions

from celeriac.control.mailbox import EXCHANGE, REPLY_EXCHANGE, Mailbox, Raw
from celeriac.exceptions import BrokerError
from celeriac.transports.amqp.options import AMQPOptions
from celeriac.transports.amqp.urls import connect_params
from celeriac.urls import redact

logger = logging.getLogger("celeriac.control")

#: Celery's defaults: ``control_queue_expires`` (10 s) and ``control_queue_ttl`` (300 s).
QUEUE_ARGUMENTS = {"x-expires": 10000, "x-message-ttl": 300000}
_ERRORS = (OSError, amqp.exceptions.AMQPError)


class AMQPMailbox(Mailbox):
    def __init__(self, url: str, options: AMQPOptions | None = None) -> None:
        super().__init__()
        self.url, self.options = url, options
        self._conn: amqp.Connection | None = None
        self._chan: Any = None
        self._got: list[Raw] = []
        self._consuming: str | None = None  # the node queue consumed
        self._reply_tag = ""  # the consumer of the client's reply queue

    def _channel(self) -> Any:
        if self._conn is None:
            try:
                conn = amqp.Connection(**connect_params(self.url, self.options, heartbeat=False))
                conn.connect()
                chan = conn.channel()
                chan.exchange_declare(EXCHANGE, "fanout", durable=False, auto_delete=False)
                chan.exchange_declare(REPLY_EXCHANGE, "direct", durable=False, auto_delete=False)
            except _ERRORS as exc:
                raise BrokerError(f"RabbitMQ remote control at {redact(self.url)}: {exc}") from exc
            self._conn, self._chan = conn, chan
        return self._chan

    def _failed(self, what: str, exc: BaseException) -> BrokerError:
        self._drop()
        return BrokerError(f"RabbitMQ remote control: {what} failed: {exc}")

    def _drop(self) -> None:
        conn, self._conn, self._chan = self._conn, None, None
        if conn is not None:
            try:
                conn.collect()
            except Exception:
                logger.debug("closing a broken remote-control connection", exc_info=True)

    def _on_message(self, msg: amqp.Message) -> None:
        try:
            body = json.loads(msg.body)
            headers = dict(msg.properties.get("application_headers") or {})
            if not isinstance(body, dict):
                raise ValueError("body is not an object")
        except (ValueError, TypeError) as exc:
            logger.warning("dropped an unreadable remote-control message: %s", exc)
            return
        self._got.append((body, headers))

    def _wait(self, timeout: float) -> list[Raw]:
        assert self._conn is not None
        try:
            self._conn.drain_events(timeout=max(0.01, timeout))
            while True:
                self._conn.drain_events(timeout=0)
        except TimeoutError:
            pass
        got, self._got = self._got, []
        return got

    def _declare_own(self, chan: Any, name: str, key: str, exchange: str) -> str:
        chan.queue_declare(
            name,
            durable=False,
            exclusive=True,
            auto_delete=True,
            arguments=dict(QUEUE_ARGUMENTS),
        )
        chan.queue_bind(name, exchange, key)
        return str(chan.basic_consume(name, callback=self._on_message, no_ack=True))

    # -- the worker's side -----------------------------------------------------------------------
    def _listen(self, node: str) -> None:
        chan = self._channel()
        name = f"{node}.{EXCHANGE}"
        try:
            self._declare_own(chan, name, "", EXCHANGE)
        except _ERRORS as exc:
            raise self._failed(f"declaring {name}", exc) from exc
        self._consuming = node

    def _receive(self, timeout: float) -> list[Raw]:
        if self._conn is None and self._consuming is not None:
            self._listen(self._consuming)  # the connection broke: listen again
        try:
            return self._wait(timeout)
        except _ERRORS as exc:
            raise self._failed("reading commands", exc) from exc

    def _send(
        self, body: dict[str, Any], headers: dict[str, Any], exchange: str, key: str, mode: int
    ) -> None:
        chan = self._channel()
        msg = amqp.Message(
            json.dumps(body),
            content_type="application/json",
            content_encoding="utf-8",
            application_headers=headers,
            delivery_mode=mode,
        )
        try:
            chan.basic_publish(msg, exchange=exchange, routing_key=key)
        except _ERRORS as exc:
            raise self._failed(f"publishing to {exchange}", exc) from exc

    def _reply(self, oid: str, body: dict[str, Any], headers: dict[str, Any]) -> None:
        self._send(body, headers, REPLY_EXCHANGE, oid, 1)

    # -- the client's side -----------------------------------------------------------------------
    def _publish(self, body: dict[str, Any], headers: dict[str, Any]) -> None:
        self._send(body, headers, EXCHANGE, "", 2)

    def _open_replies(self, oid: str) -> None:
        chan = self._channel()
        try:
            self._reply_tag = self._declare_own(
                chan, f"{oid}.{REPLY_EXCHANGE}", oid, REPLY_EXCHANGE
            )
        except _ERRORS as exc:
            raise self._failed("declaring the reply queue", exc) from exc

    def _replies(self, oid: str, timeout: float) -> list[Raw]:
        try:
            return self._wait(timeout)
        except _ERRORS as exc:
            raise self._failed("reading replies", exc) from exc

    def _close_replies(self, oid: str) -> None:
        if self._chan is None:
            return
        try:
            # Cancelled first: a queue deleted under its consumer makes RabbitMQ send a
            # basic.cancel that py-amqp raises on the next call.
            if self._reply_tag:
                self._chan.basic_cancel(self._reply_tag)
            self._chan.queue_delete(f"{oid}.{REPLY_EXCHANGE}")
        except _ERRORS as exc:
            logger.debug("deleting a reply queue failed (it expires): %s", exc)
            self._drop()
        self._got = []

    def _close(self) -> None:
        conn, self._conn, self._chan = self._conn, None, None
        if conn is not None:
            try:
                conn.close()
            except _ERRORS:
                logger.debug("closing the remote-control connection failed", exc_info=True)
