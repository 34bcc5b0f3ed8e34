"""RabbitMQ for tests: a private vhost per test session, queues deleted per test, a TCP proxy.

The server is shared with other work, so nothing here touches what it did not create: each
session makes a vhost ``celeriac-test-<hex>`` with ``rabbitmqctl`` and deletes it at the end;
tests delete the queues they declared; connection cuts go through :class:`Proxy`, never the
server itself.
"""

from __future__ import annotations

import contextlib
import select
import socket
import subprocess
import threading
import time
import uuid
from collections.abc import Iterable, Iterator
from typing import Any
from urllib.parse import quote, urlsplit

import pytest

from tests.conftest import service_url


def _ctl(*args: str) -> None:
    subprocess.run(["rabbitmqctl", *args], check=True, capture_output=True, timeout=60)


def url_for(vhost: str, port: int | None = None) -> str:
    parts = urlsplit(service_url("amqp"))
    host = parts.hostname or "127.0.0.1"
    auth = f"{parts.username or 'guest'}:{parts.password or 'guest'}"
    netloc = f"{auth}@{host}:{port or parts.port or 5672}"
    return f"amqp://{netloc}/{quote(vhost, safe='')}"


@contextlib.contextmanager
def private_vhost() -> Iterator[str]:
    name = f"celeriac-test-{uuid.uuid4().hex[:10]}"
    _ctl("add_vhost", name)
    try:
        user = urlsplit(service_url("amqp")).username or "guest"
        _ctl("set_permissions", "-p", name, user, ".*", ".*", ".*")
        yield name
    finally:
        _ctl("delete_vhost", name)


@pytest.fixture(scope="session")
def amqp_vhost() -> Iterator[str]:
    """A vhost for this test session (RabbitMQ must be up: use with the ``amqp`` marker)."""
    with private_vhost() as name:
        yield name


def raw(url: str, fn: Any) -> Any:
    """Run ``fn(channel)`` on a py-amqp connection of our own (what another peer would see)."""
    import amqp

    from celeriac.transports.amqp.urls import connect_params

    conn = amqp.Connection(**connect_params(url, heartbeat=False))
    conn.connect()
    try:
        return fn(conn.channel())
    finally:
        conn.close()


def delete_queues(url: str, names: Iterable[str]) -> None:
    """Delete queues (and leave everything else) with a connection of our own."""

    def run(ch: Any) -> None:
        for name in names:
            ch.queue_delete(name)

    raw(url, run)


def delete_exchanges(url: str, names: Iterable[str]) -> None:
    """Delete exchanges a test declared (their bindings go with them)."""

    def run(ch: Any) -> None:
        for name in names:
            ch.exchange_delete(name)

    raw(url, run)


def queues_of(broker: object) -> set[str]:
    """Every queue an AMQPBroker declared (its queues, their delay cascades, its DLQ)."""
    from celeriac.transports.amqp.declarations import DELAY_BITS, delay_queue

    names: set[str] = set()
    declarations = getattr(broker, "declarations", None)
    for name in getattr(declarations, "declared", set()):
        if "/" in name:  # the dead-letter exchange/queue marker
            names.add(name.split("/", 1)[1])
        elif not name.startswith("exchange:"):
            names.add(name)
            names.update(delay_queue(level, name) for level in range(DELAY_BITS))
    return names


class Proxy:
    """A TCP forwarder to RabbitMQ that a test can cut (every open connection is severed) or
    silence (a partition: nothing gets through, nobody is told)."""

    def __init__(self, target_port: int | None = None) -> None:
        parts = urlsplit(service_url("amqp"))
        self.target = (parts.hostname or "127.0.0.1", target_port or parts.port or 5672)
        self.server = socket.create_server(("127.0.0.1", 0))
        self.port = self.server.getsockname()[1]
        self._lock = threading.Lock()
        self._conns: list[socket.socket] = []
        self._closed = False
        #: while True, new connections are closed at once (RabbitMQ looks down)
        self.refusing = False
        #: while True, whatever either side sends is dropped, and no connection is closed
        self.silent = False
        #: while True, nothing is read from the clients (RabbitMQ's flow control): their writes
        #: fill the socket buffers and then block
        self.paused = False
        #: s each read from RabbitMQ is held before it is passed on (a server slow to answer)
        self.lag = 0.0
        self.cuts = 0
        threading.Thread(target=self._accept, daemon=True, name="proxy-accept").start()

    def _accept(self) -> None:
        while not self._closed:
            try:
                client, _ = self.server.accept()
            except OSError:
                return
            if self.refusing:
                client.close()
                continue
            try:
                upstream = socket.create_connection(self.target, timeout=5)
            except OSError:
                client.close()
                continue
            with self._lock:
                self._conns += [client, upstream]
            threading.Thread(target=self._pump, args=(client, upstream), daemon=True).start()

    def _pump(self, a: socket.socket, b: socket.socket) -> None:
        peers = {a: b, b: a}
        watched = [a, b]
        try:
            while watched:
                wanted = [s for s in watched if not (self.paused and s is a)]
                ready, _, _ = select.select(wanted, [], [], 0.05 if self.paused else 1.0)
                for src in ready:
                    try:
                        data = src.recv(65536)
                    except ConnectionError:  # reset: closed, as far as the pump is concerned
                        data = b""
                    if not data:
                        if self.silent:  # nobody hears of the close either
                            watched.remove(src)
                            continue
                        return
                    if self.lag and src is b:
                        time.sleep(self.lag)
                    if not self.silent:
                        peers[src].sendall(data)
        except (OSError, ValueError):  # ValueError: cut() closed a socket select() was given
            return
        finally:
            for s in (a, b):
                with contextlib.suppress(OSError):
                    s.close()

    def cut(self) -> None:
        """Sever every connection going through the proxy now (new ones are let through)."""
        with self._lock:
            conns, self._conns = self._conns, []
            self.cuts += 1
        for s in conns:
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)
            with contextlib.suppress(OSError):
                s.close()

    def close(self) -> None:
        self._closed = True
        self.server.close()
        self.cut()
