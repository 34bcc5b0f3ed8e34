"""PostgreSQL: one database (and schema) holds queues, results, beat's state, events and remote
control, on one set of per-thread connections (:class:`.connection.Database`).

When this transport gave both the broker and the result backend, a worker finishes a batch in
one transaction: the results are stored, the messages deleted and the next batch claimed
(:class:`PostgresCombined`), so a task's result is stored if and only if its message is
acknowledged. Beat likewise claims a tick and inserts its message in one transaction.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from celeriac.exceptions import BrokerError
from celeriac.transports.base import (
    BackendConfig,
    Combined,
    EventConfig,
    Transport,
    combine_apart,
    own,
)
from celeriac.transports.postgres.connection import SCHEMES, Database, parse_url

if TYPE_CHECKING:
    from celeriac.backends.base import EncodedResult, ResultBackend
    from celeriac.beat.store import BeatStore, TickSender
    from celeriac.brokers.base import Broker, Delivery
    from celeriac.control.mailbox import Mailbox
    from celeriac.events.channel import EventChannel
    from celeriac.transports.postgres.backend import PostgresBackend
    from celeriac.transports.postgres.beat_store import PostgresBeatStore
    from celeriac.transports.postgres.broker import PostgresBroker


class PostgresTransport(Transport):
    schemes = SCHEMES

    def __init__(self, url: str) -> None:
        super().__init__(url)
        self.db = Database(url)
        self._brokers: list[PostgresBroker] = []
        self._backends: list[PostgresBackend] = []
        self._stores: list[PostgresBeatStore] = []

    @classmethod
    def server_key(cls, url: str) -> str:
        conninfo, schema = parse_url(url)
        return f"{conninfo}#{schema}"

    def _open_broker(self, transport_options: dict[str, Any]) -> Broker:
        from celeriac.transports.postgres.broker import PostgresBroker

        broker = PostgresBroker(self.url, transport_options, db=self.db)
        self._brokers.append(broker)
        return broker

    def _open_backend(self, url: str, config: BackendConfig) -> ResultBackend:
        from celeriac.transports.postgres.backend import PostgresBackend

        backend = PostgresBackend(
            url,
            db=self.db,
            serializer=config.serializer,
            accept=config.accept,
            expires=config.expires,
            transport_options=config.transport_options,
        )
        self._backends.append(backend)
        return backend

    def _open_beat_store(self, transport_options: dict[str, Any]) -> BeatStore:
        from celeriac.transports.postgres.beat_store import PostgresBeatStore

        store = PostgresBeatStore(self.url, transport_options, db=self.db)
        self._stores.append(store)
        return store

    def _open_mailbox(self, transport_options: dict[str, Any]) -> Mailbox:
        from celeriac.transports.options import BROKER, parse_options
        from celeriac.transports.postgres.mailbox import PostgresMailbox
        from celeriac.transports.postgres.options import PostgresOptions

        parse_options(PostgresOptions, transport_options, url=self.url, setting=BROKER)
        return PostgresMailbox(self.db)

    def _open_events(self, config: EventConfig) -> EventChannel:
        from celeriac.transports.postgres.events import PostgresEventChannel

        return PostgresEventChannel(self.db, config.retention)

    def _close_connections(self) -> None:
        self.db.close()

    def upgrade_schema(self) -> str | None:
        from celeriac.transports.postgres.admin import upgrade

        done = upgrade(self.url)
        change = "up to date" if done.before == done.after else f"{done.before} -> {done.after}"
        return f"{done.url} schema {done.schema}: {change}"

    def combine(self, broker: Broker, backend: ResultBackend) -> Combined:
        mine, ours = own(self._brokers, broker), own(self._backends, backend)
        if mine is not None and ours is not None:
            return PostgresCombined(mine, ours)
        return combine_apart(broker, backend)

    def tick_sender(self, broker: Broker, store: BeatStore) -> TickSender:
        """Beat's tick and its message in one transaction: both live in this database."""
        from celeriac.transports.postgres.beat_store import PostgresTickSender

        mine, ours = own(self._brokers, broker), own(self._stores, store)
        if mine is not None and ours is not None:
            return PostgresTickSender(mine, ours)
        return super().tick_sender(broker, store)


class PostgresCombined(Combined):
    """Results stored, acks and the next claim in one transaction; each claimed task's stored
    state read by the claim itself (a revoked or already-finished task is seen before it runs)."""

    carries_results = True

    def __init__(self, broker: PostgresBroker, backend: PostgresBackend) -> None:
        super().__init__(broker, backend)
        self._broker = broker
        self._backend = backend
        broker.read_results()

    def store_ack_fetch(
        self,
        results: Sequence[EncodedResult],
        acks: Sequence[Delivery],
        queues: Sequence[str],
        limit: int,
        *,
        timeout: float,
    ) -> list[Delivery]:
        broker = self._broker
        broker.refuse_broadcast(queues)
        got: list[Delivery] = []
        if results or acks:
            with broker.db.transaction(
                BrokerError, "store results, ack and fetch", pipeline=True
            ) as cur:
                if results:
                    self._backend.store_in(cur, results)
                if acks:
                    broker.delete(cur, acks)
                if limit > 0:
                    got, _ = broker.claim_rows(cur, list(queues), limit)
        if got or limit <= 0 or (timeout <= 0 and (results or acks)):
            return got
        return broker.fetch(queues, limit, timeout=timeout)
