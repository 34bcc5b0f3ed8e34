"""AMQP 0-9-1 connections for the broker and the ``rpc://`` backend, on aiormq.

Imported only when an ``amqp://``/``amqps://`` broker or the ``rpc://`` backend is used, so
``import celeriac`` never imports the client.

A :class:`Link` is one connection on a private event-loop thread. Sync callers (a worker's
fetcher, finisher and renewer threads) run coroutines on that loop with :meth:`Link.run`, so the
connection is only ever touched by one thread and its heartbeats keep going however long a
caller blocks. A lost connection is reopened in the background with backoff.

Publishing is different: a sync caller waits for its confirms, and handing each publish to the
I/O thread and back (two thread wake-ups, two GIL hand-offs) cost it a sixth of its rate. So a
link also holds a small pool of py-amqp connections that sync callers publish on from their own
threads (:mod:`.publisher`); callers on an event loop, and callers when every one of
those is lent, go through the I/O thread.

Every channel gets an *epoch* when it opens: a delivery tag is only meaningful on the
channel that delivered it, so a tag from an older epoch is stale (RabbitMQ requeued the message
when that channel died) and must be dropped rather than acknowledged on a newer channel.

URLs: ``amqp://user:password@host:port/vhost`` in kombu's spelling (``//`` or no path is the
vhost ``/``; ``%2F`` escapes a slash), ``amqps://`` for TLS (``cafile``, ``certfile``,
``keyfile``, ``no_verify_ssl=1`` as query parameters). ``heartbeat`` and ``connect_timeout``
come from the query string, else from the transport options (:class:`.options.AMQPOptions`).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import functools
import itertools
import logging
import os
import random
import ssl
import threading
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar
from urllib.parse import quote, urlencode

import aiormq
import aiormq.abc
import aiormq.exceptions
import pamqp.commands
import pamqp.encode

from celeriac.exceptions import BrokerError
from celeriac.transports.amqp.options import AMQPOptions
from celeriac.transports.amqp.publisher import PublisherPool
from celeriac.transports.amqp.urls import Address, safe

logger = logging.getLogger("celeriac.amqp")
T = TypeVar("T")

#: Errors after which the same operation may succeed on a reopened channel or connection.
RECOVERABLE: tuple[type[BaseException], ...] = (
    aiormq.exceptions.AMQPConnectionError,
    aiormq.exceptions.ChannelInvalidStateError,
    aiormq.exceptions.ChannelClosed,
    ConnectionError,
    OSError,
    asyncio.TimeoutError,
    RuntimeError,  # aiormq: "<Connection> closed" when a channel is asked of a dead connection
)

_BACKOFF_FIRST, _BACKOFF_MAX = 0.1, 5.0


def _encode_doubles() -> None:
    """Make pamqp write floats in header tables as doubles ('d'), as py-amqp (Celery) does.

    pamqp writes them as 32-bit floats ('f'): a time limit of 1.1 s would reach a Celery worker
    as 1.100000023841858 and a timestamp would lose minutes. Patched once, on first import of
    this module (only processes that use an AMQP URL import it).
    """
    original = pamqp.encode.encode_table_value
    if getattr(original, "_celeriac", False):
        return

    def encode_table_value(value: Any) -> bytes:
        if isinstance(value, float):
            return b"d" + pamqp.encode.double(value)
        return original(value)

    encode_table_value._celeriac = True  # type: ignore[attr-defined]
    pamqp.encode.encode_table_value = encode_table_value


_encode_doubles()
_epochs = itertools.count(1)


def to_pamqp(props: Mapping[str, Any]) -> pamqp.commands.Basic.Properties:
    """Properties by py-amqp's names (``application_headers``) as pamqp's, for aiormq."""
    fields = dict(props)
    if "application_headers" in fields:
        fields["headers"] = fields.pop("application_headers")
    return pamqp.commands.Basic.Properties(**fields)


def parse_url(url: str, options: AMQPOptions | None = None) -> str:
    """The aiormq URL for a kombu-style ``amqp://`` / ``amqps://`` URL (see :mod:`.urls`)."""
    options = options or AMQPOptions()
    a = Address.parse(url)
    query: dict[str, str] = {
        "heartbeat": str(int(a.heartbeat(options))),
        "timeout": str(int(a.connect_timeout(options))),
        "name": f"celeriac pid {os.getpid()}",
    }
    sslopts = a.ssl_options()
    if sslopts is not None:  # aiormq's names
        query["no_verify_ssl"] = "0" if sslopts["cert_reqs"] == ssl.CERT_REQUIRED else "1"
        for ours, theirs in (
            ("cafile", "ca_certs"),
            ("certfile", "certfile"),
            ("keyfile", "keyfile"),
        ):
            if theirs in sslopts:
                query[ours] = sslopts[theirs]
    scheme = "amqps" if a.tls else "amqp"
    auth = f"{quote(a.user, safe='')}:{quote(a.password, safe='')}"
    return f"{scheme}://{auth}@{a.host}:{a.port}/{quote(a.vhost, safe='')}?{urlencode(query)}"


@dataclass(slots=True)
class Chan:
    """An open channel and the epoch it was opened in."""

    channel: aiormq.abc.AbstractChannel
    epoch: int

    @property
    def usable(self) -> bool:
        return not self.channel.is_closed


class Link:
    """One AMQP connection on its own event-loop thread, reopened with backoff when lost, and
    the pool of connections sync callers publish on (:attr:`publishers`)."""

    def __init__(self, url: str, options: AMQPOptions | None = None) -> None:
        self.url = url
        self.options = options or AMQPOptions()
        self._amqp_url = parse_url(url, self.options)
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self._loop.run_forever, name="celeriac-amqp-io", daemon=True
        )
        self._thread.start()
        self._conn: aiormq.abc.AbstractConnection | None = None
        self._up: asyncio.Event | None = None
        self._recovering: asyncio.Task[None] | None = None
        self._channels: dict[str, Chan] = {}
        self._channel_locks: dict[str, asyncio.Lock] = {}
        self._spawned: set[asyncio.Future[Any]] = set()
        self._closed = False
        self.pid = os.getpid()
        self.publishers = PublisherPool(url, self.options, self.options.publish_connections)

    # -- bridging ----------------------------------------------------------------------------
    def run(self, fn: Callable[[], Awaitable[T]], timeout: float) -> T:
        """Run ``fn()`` on this link's loop and wait for it; BrokerError when it takes too long."""
        if self._closed:
            raise BrokerError("the AMQP connection was closed")
        if threading.current_thread() is self._thread:
            raise RuntimeError("Link.run called from its own I/O thread")

        async def call() -> T:
            return await fn()

        future = asyncio.run_coroutine_threadsafe(call(), self._loop)
        try:
            return future.result(timeout)
        except concurrent.futures.TimeoutError:
            future.cancel()
            raise BrokerError(f"AMQP operation timed out after {timeout:.1f}s") from None

    def spawn(self, fn: Callable[[], Awaitable[Any]]) -> None:
        """Start ``fn()`` on the I/O loop and return at once; a failure is logged, not raised.

        :meth:`close` lets what was spawned finish before it closes the connection.
        """
        if self._closed:
            return

        def start() -> None:
            task = asyncio.ensure_future(fn())
            self._spawned.add(task)
            task.add_done_callback(self._spawned_done)

        self._loop.call_soon_threadsafe(start)

    def _spawned_done(self, task: asyncio.Future[Any]) -> None:
        self._spawned.discard(task)
        if not task.cancelled() and task.exception() is not None:
            logger.warning("AMQP: a background operation failed: %r", task.exception())

    def call_soon(self, fn: Callable[[], Any]) -> None:
        self._loop.call_soon_threadsafe(fn)

    # -- connection ----------------------------------------------------------------------------
    async def connection(self, timeout: float) -> aiormq.abc.AbstractConnection:
        """The open connection, waiting up to ``timeout`` s for it to be (re)established."""
        conn = self._conn
        if conn is not None and not conn.is_closed:
            return conn
        if self._up is None:
            self._up = asyncio.Event()
        if self._recovering is None or self._recovering.done():
            self._recovering = asyncio.ensure_future(self._recover())
        try:
            await asyncio.wait_for(self._up.wait(), timeout)
        except asyncio.TimeoutError:
            raise BrokerError(
                f"cannot reach RabbitMQ at {safe(self.url)} (waited {timeout:.1f}s)"
            ) from None
        assert self._conn is not None
        return self._conn

    async def _recover(self) -> None:
        """Connect, retrying with exponential backoff (and jitter) until it works or we close."""
        delay = _BACKOFF_FIRST
        while not self._closed:
            try:
                conn = await aiormq.connect(self._amqp_url)
            except Exception as exc:
                logger.warning(
                    "AMQP: cannot connect to %s (%s); retrying in %.1fs",
                    safe(self.url),
                    exc,
                    delay,
                )
                await asyncio.sleep(delay * random.uniform(0.8, 1.2))
                delay = min(delay * 2, _BACKOFF_MAX)
                continue
            self._conn = conn
            self._channels.clear()
            conn.closing.add_done_callback(functools.partial(self._on_lost, conn))
            assert self._up is not None
            self._up.set()
            if delay > _BACKOFF_FIRST:
                logger.warning("AMQP: reconnected to %s", safe(self.url))
            return

    def _on_lost(self, conn: aiormq.abc.AbstractConnection, fut: asyncio.Future[Any]) -> None:
        if fut.cancelled():
            reason: object = "cancelled"
        else:
            reason = fut.exception()
        if self._closed or conn is not self._conn:
            return
        logger.warning("AMQP: connection to %s lost (%s); reconnecting", safe(self.url), reason)
        self._conn = None
        self._channels.clear()
        if self._up is not None:
            self._up.clear()
        if self._recovering is None or self._recovering.done():
            self._recovering = asyncio.ensure_future(self._recover())

    async def channel(self, key: str, timeout: float, *, confirms: bool = False) -> Chan:
        """The channel kept under ``key``, opened (in a new epoch) when missing or closed."""
        chan = self._channels.get(key)
        if chan is not None and chan.usable:
            return chan
        lock = self._channel_locks.setdefault(key, asyncio.Lock())
        async with lock:
            chan = self._channels.get(key)
            if chan is not None and chan.usable:
                return chan
            conn = await self.connection(timeout)
            raw = await conn.channel(publisher_confirms=confirms, on_return_raises=True)
            chan = Chan(raw, next(_epochs))
            self._channels[key] = chan
            return chan

    async def scratch_channel(self, timeout: float) -> aiormq.abc.AbstractChannel:
        """A fresh channel for one job that may end in a channel error (the caller closes it)."""
        conn = await self.connection(timeout)
        return await conn.channel(publisher_confirms=False)

    def existing(self, key: str) -> Chan | None:
        """The channel kept under ``key`` if it is open; never opens one."""
        chan = self._channels.get(key)
        return chan if chan is not None and chan.usable else None

    def drop_channel(self, key: str) -> None:
        self._channels.pop(key, None)

    # -- shutdown ------------------------------------------------------------------------------
    def close(self) -> None:
        if self._closed:
            return
        if os.getpid() != self.pid:
            # The parent's connection: leave it alone, and its locks too (a parent thread may
            # have held one when it forked).
            self._closed = True
            return
        self._closed = True
        self.publishers.close()

        async def shutdown() -> None:
            self._closed = True
            if self._spawned:  # acks handed over before the close: written, not dropped
                await asyncio.wait(list(self._spawned), timeout=5)
            if self._recovering is not None:
                self._recovering.cancel()
            conn, self._conn = self._conn, None
            if conn is not None and not conn.is_closed:
                try:
                    await asyncio.wait_for(conn.close(), 5)
                except Exception as exc:  # closing a broken connection: nothing left to save
                    logger.debug("AMQP: error while closing: %s", exc)

        if self._thread.is_alive():
            try:
                asyncio.run_coroutine_threadsafe(shutdown(), self._loop).result(10)
            except Exception as exc:
                logger.debug("AMQP: shutdown did not finish cleanly: %s", exc)
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(5)
