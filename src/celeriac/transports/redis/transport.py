"""Redis: the clients to one database, shared by its broker, result backend and beat store.

A client (with its connection pool) is made per set of connection options, so a broker and a
backend configured alike share one. When this transport gave both the broker and the backend,
a worker finishes a batch in one script call: results stored, messages acknowledged and the
next batch leased (:class:`RedisCombined`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from celeriac.transports.base import (
    BackendConfig,
    Combined,
    EventConfig,
    Transport,
    combine_apart,
    own,
)
from celeriac.transports.options import BACKEND, BROKER, parse_options
from celeriac.transports.redis.backend import RedisBackend
from celeriac.transports.redis.beat_store import RedisBeatStore, RedisTickSender
from celeriac.transports.redis.broker import RedisBroker
from celeriac.transports.redis.connection import RedisTarget, client_key, connect, server_key
from celeriac.transports.redis.held import HeldConnections
from celeriac.transports.redis.options import (
    RedisBackendOptions,
    RedisConnectionOptions,
    RedisOptions,
)

if TYPE_CHECKING:
    from celeriac.backends.base import EncodedResult, ResultBackend
    from celeriac.beat.store import BeatStore, TickSender
    from celeriac.brokers.base import Broker, Delivery
    from celeriac.control.mailbox import Mailbox
    from celeriac.events.channel import EventChannel


class RedisTransport(Transport):
    schemes = ("redis", "rediss", "redis+socket", "sentinel")

    def __init__(self, url: str) -> None:
        super().__init__(url)
        self._clients: dict[tuple[str, ...], HeldConnections] = {}
        self._brokers: list[RedisBroker] = []
        self._backends: list[RedisBackend] = []
        self._stores: list[RedisBeatStore] = []

    @classmethod
    def server_key(cls, url: str) -> str:
        return server_key(url)

    def _target(self, url: str, options: RedisConnectionOptions) -> RedisTarget:
        target = connect(url, options)
        key = client_key(url, options)
        conns = self._clients.get(key)
        if conns is None:
            self._clients[key] = target.conns
            return target
        target.client.close()  # a pool that never connected: nothing to wait for
        return RedisTarget(conns, target.prefix)

    def _broker_options(self, given: dict[str, Any]) -> RedisOptions:
        return parse_options(RedisOptions, given, url=self.url, setting=BROKER)

    def _open_broker(self, transport_options: dict[str, Any]) -> Broker:
        options = self._broker_options(transport_options)
        broker = RedisBroker(self.url, transport_options, target=self._target(self.url, options))
        self._brokers.append(broker)
        return broker

    def _open_backend(self, url: str, config: BackendConfig) -> ResultBackend:
        options = dict(config.transport_options or {})
        parsed = parse_options(RedisBackendOptions, options, url=url, setting=BACKEND)
        backend = RedisBackend(
            url,
            target=self._target(url, parsed),
            serializer=config.serializer,
            accept=config.accept,
            expires=config.expires,
            transport_options=options,
        )
        self._backends.append(backend)
        return backend

    def _open_beat_store(self, transport_options: dict[str, Any]) -> BeatStore:
        options = self._broker_options(transport_options)
        store = RedisBeatStore(self.url, transport_options, target=self._target(self.url, options))
        self._stores.append(store)
        return store

    def _open_mailbox(self, transport_options: dict[str, Any]) -> Mailbox:
        from celeriac.transports.redis.mailbox import RedisMailbox

        options = self._broker_options(transport_options)
        return RedisMailbox(self._target(self.url, options))

    def _open_events(self, config: EventConfig) -> EventChannel:
        from celeriac.transports.redis.events import RedisEventChannel

        options = self._broker_options(dict(config.transport_options or {}))
        target = self._target(self.url, options)
        return RedisEventChannel(target.client, target.prefix)

    def _close_connections(self) -> None:
        clients, self._clients = list(self._clients.values()), {}
        for conns in clients:
            conns.shared.close()

    def tick_sender(self, broker: Broker, store: BeatStore) -> TickSender:
        """Beat's tick and its message in one script call, when both use one client and
        prefix (they do unless their transport options name different ones)."""
        mine, ours = own(self._brokers, broker), own(self._stores, store)
        if (
            mine is not None
            and ours is not None
            and mine.client is ours.client
            and mine.prefix == ours.prefix
        ):
            return RedisTickSender(mine, ours)
        return super().tick_sender(broker, store)

    def combine(self, broker: Broker, backend: ResultBackend) -> Combined:
        mine, ours = own(self._brokers, broker), own(self._backends, backend)
        # Lua reads JSON only: results in another format take the three calls.
        if mine is not None and ours is not None and ours.content_type == "application/json":
            return RedisCombined(mine, ours)
        return combine_apart(broker, backend)


class RedisCombined(Combined):
    """Results stored, acks and the next fetch in one script call; each fetched task's stored
    state read in the same call (a revoked or already-finished task is seen before it runs)."""

    carries_results = True

    def __init__(self, broker: RedisBroker, backend: RedisBackend) -> None:
        super().__init__(broker, backend)
        self._broker = broker
        broker.read_results(backend.prefix, backend.expires_ms)

    def store_ack_fetch(
        self,
        results: Sequence[EncodedResult],
        acks: Sequence[Delivery],
        queues: Sequence[str],
        limit: int,
        *,
        timeout: float,
    ) -> list[Delivery]:
        return self._broker.store_ack_fetch(results, acks, queues, limit, timeout=timeout)
