"""The transports an app opened in this process, one per server, and the parts it uses.

``broker_url`` and ``result_backend`` that name the same server share one transport (one set of
connections), and then a worker can finish batches on the transport's combined path (see
:meth:`celeriac.transports.Transport.combine`). Everything opens on first use; a forked child
starts with none of its parent's (the app makes a new :class:`Connections` after a fork).
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import TYPE_CHECKING

from celeriac.backends.base import DisabledBackend, ResultBackend
from celeriac.keyring import keyring_of, result_keyring_of
from celeriac.transports import (
    BackendConfig,
    Combined,
    EventConfig,
    Transport,
    backend_server_url,
    transport_class,
)
from celeriac.transports.base import combine_apart

if TYPE_CHECKING:
    from celeriac.beat.store import BeatStore
    from celeriac.brokers.base import Broker
    from celeriac.control.mailbox import Mailbox
    from celeriac.events.channel import EventChannel
    from celeriac.routing import Topology
    from celeriac.settings import Settings


class Connections:
    """Opens transports for an app's settings and hands out its broker, backend and beat store."""

    def __init__(self, conf: Settings, topology: Callable[[], Topology]) -> None:
        self.conf = conf
        self._topology = topology
        self._lock = threading.Lock()
        self._transports: dict[tuple[type[Transport], str], Transport] = {}
        self._broker: Broker | None = None
        self._backend: ResultBackend | None = None
        self._beat_store: BeatStore | None = None

    def _transport(self, url: str) -> Transport:
        cls = transport_class(url)
        key = (cls, cls.server_key(url))
        transport = self._transports.get(key)
        if transport is None or transport.closed:
            transport = self._transports[key] = cls(url)
        return transport

    @property
    def broker(self) -> Broker:
        broker = self._broker
        if broker is None:
            with self._lock:
                if self._broker is None:
                    made = self._transport(self.conf.broker_url).broker(
                        self.conf.broker_transport_options
                    )
                    made.topology = self._topology()
                    self._broker = made
                broker = self._broker
        return broker

    @property
    def backend(self) -> ResultBackend:
        backend = self._backend
        if backend is None:
            with self._lock:
                if self._backend is None:
                    self._backend = self._open_backend()
                backend = self._backend
        return backend

    def _open_backend(self) -> ResultBackend:
        url = self.backend_url()
        if not url:
            return DisabledBackend()
        conf = self.conf
        config = BackendConfig(
            serializer=conf.result_serializer,
            accept=tuple(conf.result_accept_content or conf.accept_content),
            expires=conf.result_expires,
            transport_options=conf.result_backend_transport_options,
        )
        server = backend_server_url(url, conf.broker_url)
        backend = self._transport(server).backend(url, config)
        backend.keyring = result_keyring_of(conf)
        return backend

    def backend_url(self) -> str | None:
        """The configured backend, or the broker's own store when its transport keeps results
        (SQLite, memory)."""
        configured = self.conf.result_backend
        if configured:
            return None if configured in ("disabled", "disabled://") else configured
        broker_url = self.conf.broker_url
        return broker_url if transport_class(broker_url).results_by_default else None

    @property
    def beat_store(self) -> BeatStore:
        store = self._beat_store
        if store is None:
            with self._lock:
                if self._beat_store is None:
                    self._beat_store = self._transport(self.conf.broker_url).beat_store(
                        self.conf.broker_transport_options
                    )
                store = self._beat_store
        return store

    def mailbox(self) -> Mailbox:
        """A new remote-control mailbox on the broker's server (the caller closes it)."""
        with self._lock:
            transport = self._transport(self.conf.broker_url)
        mailbox = transport.mailbox(self.conf.broker_transport_options)
        mailbox.keyring = keyring_of(self.conf)
        return mailbox

    def event_channel(self) -> EventChannel:
        """A new channel for events on the broker's server; its user closes it."""
        config = EventConfig(self.conf.broker_transport_options, self.conf.event_retention)
        with self._lock:
            transport = self._transport(self.conf.broker_url)
        return transport.events(config)

    def combined(self) -> Combined:
        """The broker and backend as a worker finishes batches with them: on the transport's
        combined path when one transport gave both."""
        broker, backend = self.broker, self.backend
        transport = broker.transport
        if transport is not None and backend.transport is transport:
            return transport.combine(broker, backend)
        return combine_apart(broker, backend)

    def close(self) -> None:
        """Close every part and transport opened here."""
        with self._lock:
            transports = list(self._transports.values())
            self._transports.clear()
            self._broker = self._backend = self._beat_store = None
        for transport in transports:
            transport.close()
