"""The AMQP connection a process consumes and administers on, owned by a thread of its own.

Imported only when an ``amqp://``/``amqps://`` broker or the ``rpc://`` backend is used, so
``import celeriac`` never imports the client (py-amqp, Celery's own).

A py-amqp connection is not thread-safe, so a :class:`Link` gives its connection to one thread,
``celeriac-amqp-io``, and other threads hand it work: :meth:`Link.run` runs a function there and
waits for its result, :meth:`Link.submit` hands one over without waiting (acks). Work runs in
the order it was handed over, which keeps acks in order. Between jobs the thread reads what
RabbitMQ sends (deliveries go to the consumers' callbacks, on that thread) and keeps the
heartbeats, so a worker busy in a long task keeps its connection, and its deliveries stay
leased, however long nobody calls ``fetch``.

Heartbeats: the link asks for ``heartbeat`` s (60 by default; the URL's ``heartbeat`` wins),
sends one every half interval when nothing else was sent, and gives the connection up when
nothing at all came from RabbitMQ for two intervals (py-amqp's ``heartbeat_tick``, checked
every second): a silent RabbitMQ is noticed within ``2 x heartbeat`` + 1 s, two minutes by
default (``test_connection.py`` pins it at ``heartbeat=1``). A host that is gone altogether is
usually noticed sooner: py-amqp's sockets give up a write the peer's TCP does not acknowledge
within a second (``TCP_USER_TIMEOUT``), and a heartbeat is written every half interval. A job
that waits for an answer (a declare) gives up after :data:`IO_TIMEOUT` without a byte from
RabbitMQ. A lost connection is reopened with backoff (0.1 s doubling to 5 s, jittered);
RabbitMQ has by then put every unacknowledged delivery back.

Every channel gets an *epoch* when it opens: a delivery tag is only meaningful on the channel
that delivered it, so a tag from an older epoch is stale (RabbitMQ requeued the message when
that channel died) and must be dropped rather than acknowledged on a newer channel. A channel
RabbitMQ closes stays closed (see :class:`_Channel`), so its epoch ends with it.

Publishing is not done here: sync callers publish on a connection of their own, shared by the
process's threads (:mod:`.publisher`), which the link owns.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import itertools
import logging
import os
import random
import select
import selectors
import ssl
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import amqp
import amqp.exceptions
from amqp import spec

from celeriac.exceptions import BrokerError
from celeriac.transports.amqp.options import AMQPOptions
from celeriac.transports.amqp.publisher import Publisher
from celeriac.transports.amqp.urls import connect_params
from celeriac.urls import redact

logger = logging.getLogger("celeriac.amqp")
T = TypeVar("T")

#: s a job waits for RabbitMQ's answer, and a read or write for the socket, before the
#: connection is given up (and reopened)
IO_TIMEOUT = 30.0
#: s between heartbeat checks while nothing happens
_TICK = 1.0
#: frames read in a row before jobs handed over meanwhile get their turn
_BURST = 256
_BACKOFF_FIRST, _BACKOFF_MAX = 0.1, 5.0
#: what tells a connection is gone (any other error of a job leaves it open)
CONNECTION_ERRORS: tuple[type[BaseException], ...] = (
    OSError,
    amqp.exceptions.ConnectionError,
)
_epochs = itertools.count(1)


class Lost(BrokerError):
    """The connection was lost, or closed, while the job ran: it may work once reopened."""


class _Channel(amqp.Channel):  # type: ignore[misc]
    """A py-amqp channel that stays closed when RabbitMQ closes it.

    py-amqp reopens such a channel under the same number: its consumers and delivery tags would
    be gone while it looked alive. Here it is let go instead, so its epoch ends, and the error
    is raised only to a job waiting on this channel (the one that caused it); a channel closed
    while nobody waits on it (``consumer_timeout``) is logged and found closed by its next user.
    """

    def _on_close(self, reply_code: int, reply_text: str, class_id: int, method_id: int) -> None:
        self.send_method(spec.Channel.CloseOk)
        waiting = bool(self._pending)
        self.collect()
        error = amqp.exceptions.error_for_code(
            reply_code, reply_text, (class_id, method_id), amqp.exceptions.ChannelError
        )
        if waiting:
            raise error
        logger.warning("AMQP: RabbitMQ closed a channel: %s", error)


@dataclass(slots=True)
class Chan:
    """An open channel and the epoch it was opened in."""

    channel: amqp.Channel
    epoch: int

    @property
    def usable(self) -> bool:
        return self.channel.connection is not None and bool(self.channel.is_open)


class _Job:
    __slots__ = ("fn", "future")

    def __init__(self, fn: Callable[[], Any], future: concurrent.futures.Future[Any] | None):
        self.fn, self.future = fn, future


_STOP = _Job(lambda: None, None)


def _readiness(sock: Any) -> Callable[[], bool]:
    """A check, without waiting, that ``sock`` has bytes to read: ``poll`` where there is one
    (a C call; the selector's own check spent a tenth of the I/O thread's time, once a frame)."""
    if hasattr(select, "poll"):
        poll = select.poll()
        poll.register(sock, select.POLLIN)
        return lambda: bool(poll.poll(0))
    return lambda: bool(select.select([sock], [], [], 0)[0])


class Link:
    """One AMQP connection owned by its I/O thread, reopened with backoff when lost, and the
    connection sync callers publish on (:attr:`publisher`)."""

    def __init__(self, url: str, options: AMQPOptions | None = None) -> None:
        self.url = url
        self.options = options or AMQPOptions()
        #: py-amqp's ``Connection`` arguments (heartbeat and timeouts from the URL or options)
        self.params = connect_params(url, self.options)
        self.pid = os.getpid()
        self.publisher = Publisher(url, self.options)
        self._jobs: deque[_Job] = deque()
        self._start_lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._wake_r, self._wake_w = -1, -1
        self._sleeping = False
        self._closed = False
        # owned by the I/O thread
        self._conn: amqp.Connection | None = None
        self._sock: Any = None  # the connection's (py-amqp's ``transport`` would reconnect)
        self._channels: dict[str, Chan] = {}
        self._selector: selectors.BaseSelector | None = None
        self._ready: Callable[[], bool] = lambda: False
        self._last_tick = 0.0
        #: why the last attempt to connect failed (None once connected), for the error a
        #: caller gets when its work timed out waiting for a connection
        self.connect_error: str | None = None

    # -- handing work over ---------------------------------------------------------------------
    def run(self, fn: Callable[[], T], timeout: float, what: str = "an operation") -> T:
        """Run ``fn()`` on the I/O thread and return its result (see :meth:`wait`)."""
        return self.wait(self.later(fn), timeout, what)

    def later(self, fn: Callable[[], T]) -> concurrent.futures.Future[T]:
        """Hand ``fn()`` to the I/O thread; its result will be in the future returned."""
        if threading.current_thread() is self._thread:
            raise RuntimeError("Link.run called from its own I/O thread")
        future: concurrent.futures.Future[T] = concurrent.futures.Future()
        self._hand_over(_Job(fn, future))
        return future

    def wait(
        self, future: concurrent.futures.Future[T], timeout: float, what: str = "an operation"
    ) -> T:
        """The result of work handed over with :meth:`later`.

        Raises :class:`BrokerError` when it takes longer than ``timeout`` s (it is then not
        run, or its result is dropped), :class:`Lost` when the connection went meanwhile, and
        any other error of the work as a :class:`BrokerError` naming ``what``.
        """
        try:
            return future.result(timeout)
        except concurrent.futures.TimeoutError:
            future.cancel()
            why = self.connect_error
            if why is not None:  # one error that says why, not only that it took too long
                raise BrokerError(
                    f"AMQP: cannot connect to {redact(self.url)} ({why}); gave up on {what} "
                    f"after {timeout:.1f}s"
                ) from None
            raise BrokerError(f"AMQP: {what} timed out after {timeout:.1f}s") from None
        except BrokerError:
            raise
        except Exception as exc:
            raise BrokerError(f"AMQP: {what} failed: {exc!r}") from exc

    def submit(self, fn: Callable[[], Any]) -> None:
        """Hand ``fn()`` to the I/O thread and return at once; a failure is logged.

        What was handed over before :meth:`close` runs before the connection closes; after it,
        nothing is (an ack then is moot: the connection's deliveries go back to their queues).
        """
        try:
            self._hand_over(_Job(fn, None))
        except BrokerError as exc:
            logger.debug("AMQP: dropped a background operation: %s", exc)

    def _hand_over(self, job: _Job) -> None:
        if self._closed and job is not _STOP:
            raise BrokerError("the AMQP connection was closed")
        if os.getpid() != self.pid:
            raise BrokerError("this AMQP connection belongs to the parent process")
        if self._thread is None:
            self._start()
        self._jobs.append(job)
        if self._sleeping:  # (set before the I/O thread looks at the jobs, so none is missed)
            with contextlib.suppress(BlockingIOError):  # full of wake-ups already
                os.write(self._wake_w, b"x")

    def _start(self) -> None:
        with self._start_lock:
            if self._thread is not None:
                return
            self._wake_r, self._wake_w = os.pipe()
            os.set_blocking(self._wake_r, False)
            os.set_blocking(self._wake_w, False)
            self._selector = selectors.DefaultSelector()
            self._selector.register(self._wake_r, selectors.EVENT_READ)
            thread = threading.Thread(target=self._serve, name="celeriac-amqp-io", daemon=True)
            thread.start()
            self._thread = thread

    # -- the I/O thread ------------------------------------------------------------------------
    def _serve(self) -> None:
        pause = _BACKOFF_FIRST
        try:
            while True:
                if self._conn is None:
                    if self._closed:
                        self._fail_jobs(Lost("the AMQP connection was closed"))
                        return
                    if not self._connect():
                        self._sleep(pause * random.uniform(0.8, 1.2))
                        pause = min(pause * 2, _BACKOFF_MAX)
                        continue
                    pause = _BACKOFF_FIRST
                try:
                    if not self._run_jobs():
                        self._disconnect(polite=True)
                        self._fail_jobs(Lost("the AMQP connection was closed"))
                        return
                    self._read()
                    self._tick()
                    if not self._jobs:
                        self._wait()
                except CONNECTION_ERRORS as exc:
                    self._lost(exc)
                except Exception as exc:  # a bug (in a consumer callback...): start afresh
                    logger.exception("AMQP: unexpected error on the I/O thread")
                    self._lost(exc)
        finally:
            for fd in (self._wake_r, self._wake_w):
                os.close(fd)

    def _connect(self) -> bool:
        name = f"celeriac pid {os.getpid()}"
        conn = amqp.Connection(**self.params, client_properties={"connection_name": name})
        try:
            conn.connect()
            sock = conn.transport.sock
            # Every read and write without a timeout of its own (a job waiting for its answer)
            # gives up after this long instead of blocking the thread for good.
            sock.settimeout(IO_TIMEOUT)
        except Exception as exc:
            conn.collect()
            self.connect_error = str(exc)
            logger.warning("AMQP: cannot connect to %s (%s); retrying soon", redact(self.url), exc)
            return False
        self.connect_error = None
        assert self._selector is not None
        self._selector.register(sock, selectors.EVENT_READ)
        self._conn, self._sock, self._channels = conn, sock, {}
        self._ready = _readiness(sock)
        self._last_tick = time.monotonic()
        return True

    def _run_jobs(self) -> bool:
        """Run what was handed over; False once :meth:`close` asked to stop."""
        while self._jobs:
            job = self._jobs.popleft()
            if job is _STOP:
                return False
            future = job.future
            if future is not None and not future.set_running_or_notify_cancel():
                continue  # its caller stopped waiting
            try:
                result = job.fn()
            except BaseException as exc:
                lost = self._is_lost(exc)
                if future is not None:
                    future.set_exception(Lost(f"AMQP connection lost: {exc!r}") if lost else exc)
                else:
                    logger.warning("AMQP: a background operation failed: %r", exc)
                if lost:
                    raise
                if not isinstance(exc, Exception):
                    raise
            else:
                if future is not None:
                    future.set_result(result)
        return True

    def _is_lost(self, exc: BaseException) -> bool:
        if isinstance(exc, OSError):
            return True
        if not isinstance(exc, amqp.exceptions.ConnectionError):
            return False
        # py-amqp also says "connection already closed" of a channel that is closed
        conn = self._conn
        return (
            conn is None
            or not conn.connected
            or not isinstance(exc, amqp.exceptions.RecoverableConnectionError)
        )

    def _read(self) -> None:
        """Dispatch the frames that have arrived (deliveries go to their consumers)."""
        conn, sock = self._conn, self._sock
        assert conn is not None and self._selector is not None
        if not conn.connected:  # (py-amqp would open it again on its own when asked to read)
            raise ConnectionError("the connection was closed")
        for _ in range(_BURST):
            # TLS may hold decrypted bytes the socket no longer shows
            buffered = isinstance(sock, ssl.SSLSocket) and sock.pending() > 0
            if not buffered and not self._ready():
                return
            conn.blocking_read(None)  # a frame; a partial one is waited for (IO_TIMEOUT)

    def _tick(self) -> None:
        now = time.monotonic()
        if now - self._last_tick >= _TICK and self._conn is not None:
            self._last_tick = now
            self._conn.heartbeat_tick()  # ConnectionForced when RabbitMQ went silent

    def _wait(self) -> None:
        """Sleep until RabbitMQ sends something, a job is handed over, or the next tick."""
        assert self._selector is not None
        self._sleeping = True
        try:
            if not self._jobs:
                timeout = max(0.0, self._last_tick + _TICK - time.monotonic())
                self._selector.select(timeout)
        finally:
            self._sleeping = False
        self._drain_wake_ups()

    def _sleep(self, seconds: float) -> None:
        """Back off between connection attempts, woken early by a close."""
        assert self._selector is not None
        deadline = time.monotonic() + seconds
        while not self._closed and (left := deadline - time.monotonic()) > 0:
            self._sleeping = True
            try:
                self._selector.select(left)
            finally:
                self._sleeping = False
            self._drain_wake_ups()

    def _drain_wake_ups(self) -> None:
        try:
            while os.read(self._wake_r, 4096):
                pass
        except BlockingIOError:
            pass

    def _lost(self, exc: BaseException) -> None:
        if not self._closed:
            logger.warning("AMQP: connection to %s lost (%r); reconnecting", redact(self.url), exc)
        self._disconnect(polite=False)

    def _disconnect(self, *, polite: bool) -> None:
        conn, sock = self._conn, self._sock
        self._conn, self._sock, self._channels = None, None, {}
        if conn is None:
            return
        assert self._selector is not None
        with contextlib.suppress(KeyError, ValueError):
            self._selector.unregister(sock)
        try:
            if polite and conn.connected:
                sock.settimeout(5.0)
                conn.close()
        except Exception as exc:  # closing a broken connection: nothing left to save
            logger.debug("AMQP: error while closing: %r", exc)
        finally:
            conn.collect()

    def _fail_jobs(self, exc: BaseException) -> None:
        while self._jobs:
            job = self._jobs.popleft()
            if job.future is not None and job.future.set_running_or_notify_cancel():
                job.future.set_exception(exc)

    # -- channels (on the I/O thread) ----------------------------------------------------------
    def channel(self, key: str) -> Chan:
        """The channel kept under ``key``, opened (in a new epoch) when missing or closed."""
        chan = self._channels.get(key)
        if chan is not None and chan.usable:
            return chan
        chan = Chan(self.scratch_channel(), next(_epochs))
        self._channels[key] = chan
        return chan

    def scratch_channel(self) -> amqp.Channel:
        """A fresh channel for one job that may end in a channel error (the caller closes it)."""
        if self._conn is None or not self._conn.connected:
            raise Lost("not connected to RabbitMQ")
        channel = _Channel(self._conn, auto_decode=False)
        channel.open()
        return channel

    def existing(self, key: str) -> Chan | None:
        """The channel kept under ``key`` if it is open; never opens one (any thread)."""
        chan = self._channels.get(key)
        return chan if chan is not None and chan.usable else None

    # -- shutdown ------------------------------------------------------------------------------
    def close(self) -> None:
        """Run what was handed over, close the connection politely and stop the thread."""
        if self._closed:
            return
        if os.getpid() != self.pid:
            # The parent's connection: leave it alone, and its locks too (a parent thread may
            # have held one when it forked).
            self._closed = True
            return
        self._closed = True
        self.publisher.close()
        thread = self._thread
        if thread is None:
            return
        self._hand_over(_STOP)
        thread.join(10)
        if thread.is_alive():
            logger.warning("AMQP: the I/O thread did not stop within 10 s")
