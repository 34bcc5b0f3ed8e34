"""RabbitMQ: one AMQP link per vhost, shared by the broker and the ``rpc://`` result backend.

The link (its consuming connection and its pool of publishing connections, see
:mod:`.connection`) is opened with the options of the first part that asks for it, usually the
broker's. When this transport gave both the broker and an ``rpc://`` backend, a worker sends a
batch's replies and then its acks on the channel the tasks came from, without waiting for
confirms (:class:`AMQPCombined`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from celeriac.exceptions import ConfigurationError
from celeriac.transports.amqp.broker import AMQPBroker
from celeriac.transports.amqp.connection import Link
from celeriac.transports.amqp.options import AMQPOptions
from celeriac.transports.amqp.rpc_backend import RPCBackend
from celeriac.transports.amqp.urls import server_key
from celeriac.transports.base import (
    BackendConfig,
    Combined,
    EventConfig,
    Transport,
    combine_apart,
    own,
)
from celeriac.transports.options import BROKER, parse_options

if TYPE_CHECKING:
    from celeriac.backends.base import EncodedResult, ResultBackend
    from celeriac.brokers.base import Broker, Delivery
    from celeriac.control.mailbox import Mailbox
    from celeriac.events.channel import EventChannel


class AMQPTransport(Transport):
    schemes = ("amqp", "amqps")

    def __init__(self, url: str) -> None:
        super().__init__(url)
        self._link: Link | None = None
        self._brokers: list[AMQPBroker] = []
        self._backends: list[RPCBackend] = []

    @classmethod
    def server_key(cls, url: str) -> str:
        return server_key(url)

    def link(self, options: AMQPOptions | None) -> Link:
        """The link, opened with ``options`` by the first part that asks for it."""
        if self._link is None:
            self._link = Link(self.url, options)
        return self._link

    def _open_broker(self, transport_options: dict[str, Any]) -> Broker:
        options = parse_options(AMQPOptions, transport_options, url=self.url, setting=BROKER)
        broker = AMQPBroker(self.url, transport_options, link=self.link(options))
        self._brokers.append(broker)
        return broker

    def _open_backend(self, url: str, config: BackendConfig) -> ResultBackend:
        if not url.lower().startswith("rpc:"):
            raise ConfigurationError(
                f"RabbitMQ stores no results: for results over it use result_backend='rpc://' "
                f"(not {url.partition('://')[0]}://)"
            )
        options = dict(config.transport_options or {})
        backend = RPCBackend(
            url,
            link=self.link(None),
            serializer=config.serializer,
            accept=config.accept,
            expires=config.expires,
            transport_options=options,
        )
        self._backends.append(backend)
        return backend

    def _open_mailbox(self, transport_options: dict[str, Any]) -> Mailbox:
        from celeriac.transports.amqp.mailbox import AMQPMailbox

        options = parse_options(AMQPOptions, transport_options, url=self.url, setting=BROKER)
        return AMQPMailbox(self.url, options)

    def _open_events(self, config: EventConfig) -> EventChannel:
        from celeriac.transports.amqp.events import AMQPEventChannel

        options = dict(config.transport_options or {})
        parsed = parse_options(AMQPOptions, options, url=self.url, setting=BROKER)
        return AMQPEventChannel(self.url, parsed)

    def _close_connections(self) -> None:
        link, self._link = self._link, None
        if link is not None:
            link.close()

    def combine(self, broker: Broker, backend: ResultBackend) -> Combined:
        mine, ours = own(self._brokers, broker), own(self._backends, backend)
        if mine is not None and ours is not None:
            return AMQPCombined(mine, ours)
        return combine_apart(broker, backend)


class AMQPCombined(Combined):
    """``rpc://`` replies and acks written on the tasks' own channel, then the next fetch."""

    carries_results = True

    def __init__(self, broker: AMQPBroker, backend: RPCBackend) -> None:
        super().__init__(broker, backend)
        self._broker, self._rpc = broker, backend

    def store_ack_fetch(
        self,
        results: Sequence[EncodedResult],
        acks: Sequence[Delivery],
        queues: Sequence[str],
        limit: int,
        *,
        timeout: float,
    ) -> list[Delivery]:
        return self._broker.reply_ack_fetch(
            self._rpc, results, acks, queues, limit, timeout=timeout
        )
