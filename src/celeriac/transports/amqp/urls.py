"""AMQP URLs in kombu's spelling, read in one place for every connection we open.

``amqp://user:password@host:port/vhost``: ``//`` or no path is the vhost ``/``, ``%2F`` escapes a
slash, user and password default to ``guest``. ``amqps://`` is TLS on port 5671 by default, with
``cafile``, ``certfile``, ``keyfile`` and ``no_verify_ssl=1`` as query parameters. The query may
also carry ``heartbeat`` and ``connect_timeout`` (or ``timeout``), which win over the transport
options (:class:`.options.AMQPOptions`).

Both kinds of connection are built from :func:`connect_params`: the link's, which consumes and
administers (:mod:`.connection`), and the publishers' (:mod:`.publisher`), which ask for no
heartbeats (nothing would answer them between calls).
"""

from __future__ import annotations

import math
import socket
import ssl
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl, unquote, urlsplit

from celeriac.exceptions import ConfigurationError
from celeriac.transports.amqp.options import AMQPOptions
from celeriac.urls import redact

#: our URL's TLS parameters and py-amqp's names for them
_TLS_FILES = (("cafile", "ca_certs"), ("certfile", "certfile"), ("keyfile", "keyfile"))
_TRUE = ("1", "true", "yes")

#: ms a connection's written data may wait unacknowledged before the kernel drops it
#: (``TCP_USER_TIMEOUT``). py-amqp's default is 1,000: RabbitMQ's flow control stops reading a
#: busy publisher for longer than that, and the dropped connection took what RabbitMQ had not
#: handled yet with it (1,152 of 20,001 unconfirmed messages across a 3 s stall, in
#: tests/transports/amqp/test_broker.py). A dead server is found by heartbeats and by the time
#: limit on every socket operation.
USER_TIMEOUT_MS = 30_000


@dataclass(frozen=True, slots=True)
class Address:
    """What an AMQP URL names: a server, a login and a vhost, and the query parameters."""

    tls: bool
    host: str
    port: int
    user: str
    password: str
    vhost: str
    query: dict[str, str]

    @classmethod
    def parse(cls, url: str) -> Address:
        parts = urlsplit(url)
        scheme = parts.scheme.lower()
        if scheme not in ("amqp", "amqps"):
            raise ConfigurationError(f"not an AMQP URL: {redact(url)!r} (amqp:// or amqps://)")
        tls = scheme == "amqps"
        path = parts.path
        return cls(
            tls=tls,
            host=parts.hostname or "localhost",
            port=parts.port or (5671 if tls else 5672),
            user=unquote(parts.username or "guest"),
            password=unquote(parts.password or "guest"),
            vhost="/" if path in ("", "/", "//") else unquote(path[1:]),
            query=dict(parse_qsl(parts.query)),
        )

    def heartbeat(self, options: AMQPOptions) -> float:
        return float(self.query.get("heartbeat", options.heartbeat))

    def connect_timeout(self, options: AMQPOptions) -> float:
        q = self.query
        return float(q.get("connect_timeout", q.get("timeout", options.connect_timeout)))

    def ssl_options(self) -> dict[str, Any] | None:
        """py-amqp's ``ssl`` argument: None without TLS."""
        if not self.tls:
            return None
        verify = self.query.get("no_verify_ssl", "0").lower() not in _TRUE
        sslopts: dict[str, Any] = {"cert_reqs": ssl.CERT_REQUIRED if verify else ssl.CERT_NONE}
        if verify:  # py-amqp checks the host name whenever it is given one
            sslopts["server_hostname"] = self.host
        for ours, theirs in _TLS_FILES:
            if self.query.get(ours):
                sslopts[theirs] = self.query[ours]
        return sslopts


def connect_params(
    url: str, options: AMQPOptions | None = None, *, heartbeat: bool = True
) -> dict[str, Any]:
    """py-amqp's ``Connection`` arguments for ``url``; ``heartbeat=False`` asks for none."""
    options = options or AMQPOptions()
    address = Address.parse(url)
    params: dict[str, Any] = {
        "host": f"{address.host}:{address.port}",
        "userid": address.user,
        "password": address.password,
        "login_method": "PLAIN",
        "virtual_host": address.vhost,
        "heartbeat": int(address.heartbeat(options)) if heartbeat else 0,
        "connect_timeout": address.connect_timeout(options),
    }
    if hasattr(socket, "TCP_USER_TIMEOUT"):  # Linux only, as is py-amqp's default
        params["socket_settings"] = {socket.TCP_USER_TIMEOUT: USER_TIMEOUT_MS}
    sslopts = address.ssl_options()
    if sslopts is not None:
        params["ssl"] = sslopts
    return params


def idle_limit(url: str, options: AMQPOptions | None = None) -> float:
    """How long a connection without heartbeats may sit unused before it is replaced: half the
    heartbeat interval the URL or options ask for (``heartbeat=0``: forever)."""
    heartbeat = Address.parse(url).heartbeat(options or AMQPOptions())
    return heartbeat / 2 if heartbeat > 0 else math.inf


def server_key(url: str) -> str:
    """Names the server, login and vhost ``url`` reaches (not its query)."""
    a = Address.parse(url)
    return f"{'amqps' if a.tls else 'amqp'}://{a.user}:{a.password}@{a.host}:{a.port}/{a.vhost}"
