"""The servers a ``memcached://`` URL names, and a pool of connections to each.

``memcached://h1:11211;h2:11211`` (Celery's separator; ``,`` works too) spreads keys over the
servers by rendezvous hashing of a routing key: a result's is its key, a chord's is its group's
key, so all of one chord's keys live on one server and each chord step talks to one. A server
that is down makes the keys routed to it fail with :class:`BackendError`; they are not moved to
another server (a chord half on one server and half on another could not count).
"""

from __future__ import annotations

import threading
import weakref
from collections.abc import Callable
from typing import Any, TypeVar

from pymemcache.client.base import Client
from pymemcache.client.rendezvous import RendezvousHash
from pymemcache.exceptions import MemcacheError, MemcacheUnexpectedCloseError

from celeriac._fork import generation
from celeriac.exceptions import BackendError, ConfigurationError
from celeriac.transports.memcached.options import MemcachedOptions
from celeriac.urls import redact

DEFAULT_PORT = 11211
T = TypeVar("T")

#: What a dropped connection raises: the client closes it, so one more try runs on a fresh one
#: (a memcached restart costs no error).
_CONNECTION_ERRORS = (OSError, MemcacheUnexpectedCloseError)


def parse_servers(url: str) -> list[tuple[str, int]]:
    """``(host, port)`` of each server ``url`` names, in order."""
    rest = url.partition("://")[2].split("?", 1)[0]
    hosts = rest.split("/", 1)[0]
    if "@" in hosts:  # and a password would end up in error messages as part of a host name
        raise ConfigurationError(
            f"{redact(url)!r}: memcached:// takes no user or password (memcached's text"
            " protocol has no authentication)"
        )
    servers: list[tuple[str, int]] = []
    for spec in hosts.replace(",", ";").split(";"):
        spec = spec.strip()
        if not spec:
            continue
        if spec.startswith("["):  # [::1]:11211
            host, _, port = spec[1:].partition("]")
            port = port.lstrip(":")
        else:
            host, _, port = spec.rpartition(":") if ":" in spec else (spec, "", "")
        if not host or (port and not port.isdigit()):
            raise ConfigurationError(
                f"cannot read the memcached server {spec!r} in {redact(url)!r}"
            )
        servers.append((host, int(port) if port else DEFAULT_PORT))
    if not servers:
        raise ConfigurationError(
            f"{redact(url)!r} names no memcached server: memcached://host:port (several: "
            "memcached://host1:port1;host2:port2)"
        )
    return servers


class Servers:
    """A connection per thread to each server of one URL (remade in a forked child), and
    routing.

    Per thread rather than a shared pool: after a server restart every connection is stale, and
    a thread's next command finds its own one broken, reconnects and tries again once, where a
    shared pool would hand the retry another stale connection.
    """

    def __init__(self, url: str, options: MemcachedOptions) -> None:
        self.url = url
        self.addresses = parse_servers(url)
        self.options = options
        self._names = [f"{host}:{port}" for host, port in self.addresses]
        self._hash = RendezvousHash(self._names) if len(self._names) > 1 else None
        self._local = threading.local()
        self._lock = threading.Lock()
        #: every connection opened, for close(); one whose thread ended goes with the thread
        self._opened: weakref.WeakSet[Client] = weakref.WeakSet()

    def _client(self, name: str) -> Client:
        clients: dict[str, Client] | None = getattr(self._local, "clients", None)
        if clients is None or self._local.generation != generation():
            # first use in this thread, or forked: the parent's sockets are not ours
            clients = self._local.clients = {}
            self._local.generation = generation()
        client = clients.get(name)
        if client is None:
            client = clients[name] = Client(
                self.addresses[self._names.index(name)],
                connect_timeout=self.options.connect_timeout,
                timeout=self.options.socket_timeout,
                no_delay=True,
                default_noreply=False,  # pymemcache's default is unconfirmed writes
            )
            with self._lock:
                self._opened.add(client)
        return client

    def node(self, route: str) -> str:
        """The server ``route`` maps to (``host:port``)."""
        return self._names[0] if self._hash is None else str(self._hash.get_node(route))

    def client(self, route: str) -> Client:
        """This thread's connection to the server of ``route``."""
        return self._client(self.node(route))

    def call(
        self, route: str, what: str, op: Callable[..., T], *args: Any, retry: bool = True
    ) -> T:
        """``op(client, *args)`` on the server of ``route``; once more on a fresh connection
        if the first was dropped and ``retry`` (commands that are harmless twice)."""
        client = self.client(route)
        try:
            try:
                return op(client, *args)
            except _CONNECTION_ERRORS:
                if not retry:
                    raise
                return op(client, *args)
        except (MemcacheError, OSError) as exc:
            raise BackendError(
                f"memcached {self.node(route)}: {what} failed: {type(exc).__name__}: {exc}"
            ) from exc

    def close(self) -> None:
        with self._lock:
            clients = list(self._opened)
            self._opened = weakref.WeakSet()
        for client in clients:
            client.close()
