"""Confirmed publishing for sync callers, on py-amqp.

A thread that calls ``delay()`` waits for RabbitMQ's confirm, and whatever else the call costs is
CPU on that thread. On aiormq that is an event loop run for the call (eight turns of it for one
publish and its confirm) and pamqp's encoding: ~280 us per message, more than Celery's whole
``delay()`` leaves for its client. py-amqp, Celery's own client, publishes and reads the confirm
synchronously for ~150 us (``bench/amqp_publish.py``). So a sync caller publishes on a py-amqp
connection lent to it from a small pool, one thread at a time on each, like a database
connection; everything else (consuming, declaring, ``publish_many``, callers on an event loop,
replies) stays on the aiormq links of :mod:`celeriac._amqp`.

A publish either is confirmed or raises :class:`~celeriac.exceptions.BrokerError`: a lost
connection is reopened and the message sent again until ``publish_timeout`` runs out (at least
once: a confirm lost with its connection means the message may be there twice). Nothing reads
such a connection between calls, so one left idle for half the heartbeat interval is replaced
before use rather than written to after RabbitMQ gave up on it.
"""

from __future__ import annotations

import asyncio
import logging
import math
import os
import ssl
import threading
import time
from collections.abc import Mapping
from typing import Any
from urllib.parse import parse_qsl, unquote, urlsplit

import amqp
import amqp.exceptions

from celeriac.exceptions import BrokerError

logger = logging.getLogger("celeriac.amqp")

#: RabbitMQ's reply code for a mandatory message that no queue took (basic.return)
_NO_ROUTE = 312
_PAUSE_FIRST, _PAUSE_MAX = 0.05, 1.0
#: our URL's TLS parameters (aiormq's names) and py-amqp's for them
_TLS_FILES = (("cafile", "ca_certs"), ("certfile", "certfile"), ("keyfile", "keyfile"))


class Unroutable(BrokerError):
    """RabbitMQ returned a mandatory message: no queue is bound for its routing key."""


def connect_params(url: str, options: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """py-amqp's ``Connection`` arguments for a kombu-style ``amqp://`` / ``amqps://`` URL.

    The same spelling :func:`celeriac._amqp.parse_url` reads: ``//`` or no path is the vhost
    ``/``; ``cafile``, ``certfile``, ``keyfile`` and ``no_verify_ssl`` for TLS.
    """
    options = options or {}
    parts = urlsplit(url)
    tls = parts.scheme.lower() == "amqps"
    query = dict(parse_qsl(parts.query))
    path = parts.path
    host = parts.hostname or "localhost"
    params: dict[str, Any] = {
        "host": f"{host}:{parts.port or (5671 if tls else 5672)}",
        "userid": unquote(parts.username or "guest"),
        "password": unquote(parts.password or "guest"),
        "virtual_host": "/" if path in ("", "/", "//") else unquote(path[1:]),
        "heartbeat": float(query.get("heartbeat", options.get("heartbeat", 60))),
        "connect_timeout": float(query.get("connect_timeout", options.get("connect_timeout", 10))),
        "client_properties": {"connection_name": f"celeriac pid {os.getpid()} publish"},
        "confirm_publish": True,
    }
    if tls:
        verify = query.get("no_verify_ssl", "0").lower() not in ("1", "true", "yes")
        sslopts: dict[str, Any] = {
            "server_hostname": host,
            "cert_reqs": ssl.CERT_REQUIRED if verify else ssl.CERT_NONE,
        }
        for ours, theirs in _TLS_FILES:
            if query.get(ours):
                sslopts[theirs] = query[ours]
        params["ssl"] = sslopts
    return params


class Publisher:
    """One py-amqp connection with a confirming channel, used by one thread at a time."""

    def __init__(self, params: Mapping[str, Any]) -> None:
        self._params = dict(params)
        heartbeat = float(self._params.get("heartbeat") or 0)
        self._idle_limit = heartbeat / 2 if heartbeat > 0 else math.inf
        self._conn: amqp.Connection | None = None
        self._channel: amqp.Channel | None = None
        self._last_use = 0.0

    def publish(
        self,
        body: bytes,
        exchange: str,
        routing_key: str,
        properties: Mapping[str, Any],
        deadline: float,
    ) -> None:
        """Publish (mandatory) and wait for the confirm; again on a new connection after a loss.

        ``deadline`` is a :func:`time.monotonic` time. Raises :class:`Unroutable` when RabbitMQ
        returned the message, :class:`BrokerError` when it refused it or the deadline passed.
        """
        message = amqp.Message(body, **properties)
        pause = _PAUSE_FIRST
        while True:
            try:
                channel = self._open(deadline)
                channel.basic_publish(
                    message,
                    exchange=exchange,
                    routing_key=routing_key,
                    mandatory=True,
                    timeout=max(0.01, deadline - time.monotonic()),
                )
                self._last_use = time.monotonic()
                return
            except amqp.exceptions.MessageNacked as exc:
                self.close()
                raise BrokerError(f"RabbitMQ refused a message for {routing_key!r}") from exc
            except amqp.exceptions.ChannelError as exc:
                # The ack that follows a basic.return is still unread: this channel's next wait
                # would take it for the next message's, so the connection goes.
                self.close()
                if exc.reply_code == _NO_ROUTE:
                    raise Unroutable(
                        f"RabbitMQ could not route a message to {routing_key!r}: {exc}"
                    ) from exc
                error: Exception = exc
            except amqp.exceptions.FrameSyntaxError as exc:  # a header AMQP cannot carry
                self.close()
                raise BrokerError(f"cannot publish to {routing_key!r}: {exc}") from exc
            except (OSError, amqp.exceptions.AMQPError) as exc:
                self.close()
                error = exc
            if time.monotonic() + pause >= deadline:
                raise BrokerError(
                    f"publish to {routing_key!r} not confirmed in time: {error!r}"
                ) from error
            logger.debug("AMQP: publish to %r failed (%r), again soon", routing_key, error)
            time.sleep(pause)
            pause = min(pause * 2, _PAUSE_MAX)

    def _open(self, deadline: float) -> amqp.Channel:
        if self._channel is not None and time.monotonic() - self._last_use > self._idle_limit:
            self.close()
        if self._channel is None:
            timeout = min(float(self._params["connect_timeout"]), deadline - time.monotonic())
            conn = amqp.Connection(**{**self._params, "connect_timeout": max(0.01, timeout)})
            try:
                conn.connect()
                self._channel = conn.channel()
            except BaseException:
                conn.collect()
                raise
            self._conn = conn
            self._last_use = time.monotonic()
        return self._channel

    def close(self) -> None:
        """Drop the connection (a polite close if it still works; none is waited for long)."""
        conn, self._conn, self._channel = self._conn, None, None
        if conn is None:
            return
        try:
            if conn.connected:
                conn.close()
        except Exception as exc:  # it was going anyway
            logger.debug("AMQP: closing a publish connection: %r", exc)
        finally:
            conn.collect()

    def forget(self) -> None:
        """Let go of a connection a parent process opened, without touching its socket."""
        self._conn, self._channel = None, None


class PublisherPool:
    """Up to ``limit`` publishers, each lent to one thread at a time."""

    def __init__(self, url: str, options: Mapping[str, Any] | None, limit: int) -> None:
        self._params = connect_params(url, options)
        self.limit = limit
        self._idle: list[Publisher] = []
        self._lent = 0
        self._lock = threading.Lock()
        self._pid = os.getpid()
        self._closed = False

    def borrow(self) -> Publisher | None:
        """A publisher for this thread, or None (the caller is on an event loop, all are lent,
        or the pool is closed): then publish the other way."""
        if self.limit <= 0 or asyncio._get_running_loop() is not None:
            return None
        with self._lock:
            if self._closed:
                return None
            if os.getpid() != self._pid:  # forked: the parent's connections are not ours
                for publisher in self._idle:
                    publisher.forget()
                self._idle, self._lent, self._pid = [], 0, os.getpid()
            if self._idle:
                self._lent += 1
                return self._idle.pop()
            if self._lent >= self.limit:
                return None
            self._lent += 1
        return Publisher(self._params)

    def give_back(self, publisher: Publisher) -> None:
        with self._lock:
            self._lent = max(0, self._lent - 1)
            if not self._closed:
                self._idle.append(publisher)
                return
        publisher.close()

    @property
    def idle(self) -> int:
        return len(self._idle)

    def close(self) -> None:
        with self._lock:
            self._closed = True
            idle, self._idle = self._idle, []
            mine = os.getpid() == self._pid
        for publisher in idle:
            if mine:
                publisher.close()
            else:
                publisher.forget()
