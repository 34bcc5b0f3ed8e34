"""Confirmed publishing for sync callers, on py-amqp.

A thread that calls ``delay()`` waits for RabbitMQ's confirm, and whatever else the call costs is
CPU on that thread. py-amqp publishes and reads the confirm synchronously for ~140 us
(``bench/amqp_publish.py``), and handing each publish to another thread and back would add two
thread wake-ups (through the link's I/O thread, ``delay()`` ran at 1,095/s against 1,535/s on a
connection of the caller's own: bench/README.md). So a caller publishes on a connection lent to
it from a small pool, one thread at a time on each, like a database connection: one message, or
a batch (``publish_many``, ``rpc://`` results, dead letters) sent whole before its confirms are
awaited together. A thread that finds every connection lent waits for one (up to
``publish_connections``, 10 by default, per process and server). Consuming, declaring and
acknowledging happen on the link of :mod:`.connection`, which owns the pool.

A publish either is confirmed or raises :class:`~celeriac.exceptions.BrokerError`: a lost
connection is reopened and the message sent again until ``publish_timeout`` runs out (at least
once: a confirm lost with its connection means the message may be there twice). The wait for the
confirm is ours, not py-amqp's: py-amqp waits anew after every frame that is not the confirm (a
heartbeat, ``connection.blocked``), so a server that stays up but never confirms would hold the
caller forever; ours ends at the deadline, and it matches confirms to messages by their
delivery tags. These connections ask for no heartbeats, since nothing would answer them between
calls; one left idle for half the heartbeat interval is replaced before use instead (a firewall
may have dropped it silently), and every socket operation has a time limit.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import struct
import threading
import time
from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import amqp
import amqp.exceptions

from celeriac.exceptions import BrokerError
from celeriac.transports.amqp.options import AMQPOptions
from celeriac.transports.amqp.urls import connect_params, idle_limit

logger = logging.getLogger("celeriac.amqp")

#: reply codes that declaring again may cure: a mandatory message no queue took (basic.return),
#: an exchange that is not there (both deleted behind our back)
_REDECLARE = (312, 404)
_PAUSE_FIRST, _PAUSE_MAX = 0.05, 1.0
#: what py-amqp raises for a message it cannot encode (before it writes anything)
_UNENCODABLE = (amqp.exceptions.FrameSyntaxError, TypeError, ValueError, struct.error)


class Unroutable(BrokerError):
    """RabbitMQ returned a mandatory message, or its exchange is gone: declare again, then send
    :attr:`items` again (what was not confirmed, or came back)."""

    def __init__(self, message: str, items: Sequence[Outgoing] = ()) -> None:
        super().__init__(message)
        self.items = list(items)


@dataclass(frozen=True)
class Outgoing:
    """One message to publish; ``properties`` by py-amqp's names (``application_headers``)."""

    body: bytes
    exchange: str
    routing_key: str
    properties: Mapping[str, Any]
    mandatory: bool = True

    @property
    def route(self) -> tuple[str, str]:
        return self.exchange, self.routing_key

    def _returned_as(self) -> tuple[str, str, Any]:
        return self.exchange, self.routing_key, self.properties.get("correlation_id")


class Publisher:
    """One py-amqp connection with a confirming channel, used by one thread at a time."""

    def __init__(self, params: Mapping[str, Any], idle: float = math.inf) -> None:
        self._params = dict(params)
        self._idle_limit = idle
        self._conn: amqp.Connection | None = None
        self._channel: amqp.Channel | None = None
        self._last_use = 0.0
        # confirm bookkeeping for the channel (events from py-amqp's frame dispatch): the last
        # delivery tag, the items not confirmed yet, nacks and returns
        self._tag = 0
        self._outstanding: dict[int, Outgoing] = {}
        self._nacked = 0
        self._returns: list[tuple[str, str, Any]] = []

    def send(self, items: Sequence[Outgoing], deadline: float) -> list[Outgoing]:
        """Publish every item, then wait for all their confirms; what a lost connection left
        unconfirmed is sent again on a new one until ``deadline`` (a :func:`time.monotonic`
        time).

        Returns the mandatory items RabbitMQ returned (no queue took them). Raises
        :class:`Unroutable` when an exchange is missing, :class:`BrokerError` when RabbitMQ
        refused a message or the deadline passed.
        """
        pending = list(items)
        returned: list[Outgoing] = []
        refused = 0  # nacked, on this connection or one lost since
        pause = _PAUSE_FIRST
        while True:
            try:
                returned += self._send_once(pending, deadline)
                refused += self._nacked
                break
            except amqp.exceptions.ChannelError as exc:
                self._drop()
                if exc.reply_code in _REDECLARE:
                    # What was confirmed before the channel closed stays sent.
                    unconfirmed = {id(item) for item in self._outstanding.values()}
                    settled = [i for i in pending if id(i) not in unconfirmed]
                    again = returned + self._settled_returns(settled)
                    again += [i for i in pending if id(i) in unconfirmed]
                    raise Unroutable(f"RabbitMQ could not route a message: {exc}", again) from exc
                # The same publish would fail the same way (access, size): no use sending again.
                raise BrokerError(f"RabbitMQ refused the publish: {exc}") from exc
            except _UNENCODABLE as exc:  # a header AMQP cannot carry, a routing key too long
                self._drop()
                raise BrokerError(f"cannot publish: {exc}") from exc
            except (OSError, amqp.exceptions.AMQPError) as exc:
                # Confirmed (or refused) before the loss: settled. The rest, written or not
                # (or never reached, when the connection would not open), goes again.
                unconfirmed = {id(item) for item in self._outstanding.values()}
                returned += self._settled_returns([i for i in pending if id(i) not in unconfirmed])
                refused += self._nacked
                pending = [i for i in pending if id(i) in unconfirmed]
                self._drop()
                error: Exception = exc
            except BaseException:
                # Interrupted (KeyboardInterrupt...) with confirms perhaps still on their way:
                # the connection must not serve another publish.
                self._drop()
                raise
            if time.monotonic() + pause >= deadline:
                raise BrokerError(
                    f"{len(pending)} publish(es) not confirmed in time: {error!r}"
                ) from error
            logger.debug("AMQP: publish failed (%r), %d again soon", error, len(pending))
            time.sleep(pause)
            pause = min(pause * 2, _PAUSE_MAX)
        if refused:
            raise BrokerError(f"RabbitMQ refused {refused} message(s) (nack)")
        return returned

    def _send_once(self, items: Sequence[Outgoing], deadline: float) -> list[Outgoing]:
        # Every item is outstanding until confirmed: from before the connection opens (if it
        # does not, all go again), then by the tags the channel will give them (1, 2, 3...).
        self._outstanding = {-n: item for n, item in enumerate(items, 1)}
        self._nacked, self._returns = 0, []
        channel = self._open(deadline)
        conn = self._conn
        assert conn is not None
        first = self._tag + 1
        self._outstanding = {first + n: item for n, item in enumerate(items)}
        self._tag += len(items)
        for item in items:
            channel.basic_publish(
                amqp.Message(item.body, **item.properties),
                exchange=item.exchange,
                routing_key=item.routing_key,
                mandatory=item.mandatory,
                timeout=_left(deadline),
            )
        while self._outstanding:
            conn.drain_events(timeout=_left(deadline))  # TimeoutError once it has passed
        self._last_use = time.monotonic()
        return self._settled_returns(items)

    def _settled_returns(self, settled: Sequence[Outgoing]) -> list[Outgoing]:
        """Those of ``settled`` (confirmed) that RabbitMQ returned first.

        A return names the exchange, routing key and properties, not the delivery tag: the
        correlation id (the task id) tells the messages of one batch apart.
        """
        keys = Counter(self._returns)
        self._returns = []
        if not keys:
            return []
        out = []
        for item in settled:
            key = item._returned_as()
            if keys[key] > 0:
                keys[key] -= 1
                out.append(item)
        return out

    def _on_ack(self, tag: int, multiple: bool) -> None:
        self._settle(tag, multiple)

    def _on_nack(self, tag: int, multiple: bool) -> None:
        self._nacked += self._settle(tag, multiple)

    def _settle(self, tag: int, multiple: bool) -> int:
        if not multiple:
            return 1 if self._outstanding.pop(tag, None) is not None else 0
        done = [t for t in self._outstanding if t <= tag]
        for t in done:
            del self._outstanding[t]
        return len(done)

    def _on_return(self, exc: Exception, exchange: str, routing_key: str, message: Any) -> None:
        props = getattr(message, "properties", None) or {}
        self._returns.append((exchange, routing_key, props.get("correlation_id")))

    def _open(self, deadline: float) -> amqp.Channel:
        if self._channel is not None and time.monotonic() - self._last_use > self._idle_limit:
            self._drop()
        if self._channel is None:
            timeout = min(float(self._params["connect_timeout"]), _left(deadline))
            conn = amqp.Connection(
                **{**self._params, "connect_timeout": timeout},
                client_properties={"connection_name": f"celeriac pid {os.getpid()} publish"},
            )
            try:
                conn.connect()
                # Every read and write without a timeout of its own (opening the channel, a
                # polite close) gives up after this long instead of blocking.
                conn.transport.sock.settimeout(timeout)
                channel = conn.channel()
                channel.confirm_select()
                channel.events["basic_ack"].add(self._on_ack)
                channel.events["basic_nack"].add(self._on_nack)
                channel.events["basic_return"].add(self._on_return)
            except BaseException:
                conn.collect()
                raise
            self._conn, self._channel, self._tag = conn, channel, 0
            self._last_use = time.monotonic()
        return self._channel

    def close(self) -> None:
        """Close the connection politely (a second at most), or drop it."""
        conn, self._conn, self._channel = self._conn, None, None
        if conn is None:
            return
        try:
            conn.transport.sock.settimeout(1.0)
            conn.close()
        except Exception as exc:  # it was going anyway
            logger.debug("AMQP: closing a publish connection: %r", exc)
        finally:
            conn.collect()

    def _drop(self) -> None:
        """Let the connection go without a word: after an error it may not answer at all."""
        conn, self._conn, self._channel = self._conn, None, None
        if conn is not None:
            try:
                conn.collect()
            except Exception as exc:
                logger.debug("AMQP: dropping a publish connection: %r", exc)

    def forget(self) -> None:
        """Let go of a connection a parent process opened, without touching its socket."""
        self._conn, self._channel = None, None


def _left(deadline: float) -> float:
    left = deadline - time.monotonic()
    if left <= 0:
        raise TimeoutError("the publish deadline passed")
    return left


class PublisherPool:
    """Up to ``limit`` publishers (one at least), each lent to one thread at a time; a thread
    that finds them all lent waits for one to be given back."""

    def __init__(self, url: str, options: AMQPOptions | None, limit: int) -> None:
        self._params = connect_params(url, options, heartbeat=False)
        self._idle_limit = idle_limit(url, options)
        self.limit = max(1, limit)
        self._idle: list[Publisher] = []
        self._lent = 0
        self._cond = threading.Condition()
        self._pid = os.getpid()
        self._closed = False

    @contextlib.contextmanager
    def lent(self, deadline: float) -> Iterator[Publisher]:
        """A publisher for this thread while the block runs (see :meth:`borrow`)."""
        publisher = self.borrow(deadline)
        try:
            yield publisher
        finally:
            self.give_back(publisher)

    def borrow(self, deadline: float) -> Publisher:
        """A publisher for this thread, waiting until ``deadline`` (a :func:`time.monotonic`
        time) for one when all are lent; :class:`BrokerError` when none came back in time or
        the pool is closed."""
        if os.getpid() != self._pid:  # forked: before the lock, which a parent thread may hold
            self._after_fork()
        with self._cond:
            while True:
                if self._closed:
                    raise BrokerError("the AMQP connection was closed")
                if self._idle:
                    self._lent += 1
                    return self._idle.pop()
                if self._lent < self.limit:
                    self._lent += 1
                    break
                left = deadline - time.monotonic()
                if left <= 0:
                    raise BrokerError(
                        f"no publish connection came free in time: all {self.limit} were in "
                        "use (publish_connections)"
                    )
                self._cond.wait(left)
        return Publisher(self._params, self._idle_limit)

    def _after_fork(self) -> None:
        """The parent's connections are not ours (nor is a lock one of its threads held)."""
        for publisher in self._idle:
            publisher.forget()
        self._cond = threading.Condition()
        self._idle, self._lent, self._pid = [], 0, os.getpid()

    def give_back(self, publisher: Publisher) -> None:
        if os.getpid() != self._pid:  # borrowed before a fork: its connection is the parent's
            publisher.forget()
            return
        with self._cond:
            self._lent = max(0, self._lent - 1)
            self._cond.notify()
            if not self._closed:
                self._idle.append(publisher)
                return
        publisher.close()

    @property
    def idle(self) -> int:
        return len(self._idle)

    def close(self) -> None:
        with self._cond:
            self._closed = True
            idle, self._idle = self._idle, []
            mine = os.getpid() == self._pid
            self._cond.notify_all()
        for publisher in idle:
            if mine:
                publisher.close()
            else:
                publisher.forget()
