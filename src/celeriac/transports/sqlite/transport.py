"""The embedded default: one SQLite file holds queues, results and beat's state.

The transport owns the file's connections (one per thread and role) and the lock that queues
this process's writers, shared by its broker, backend and beat store.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from celeriac.exceptions import BackendError, BrokerError, CeleriacError
from celeriac.transports.base import BackendConfig, Combined, EventConfig, Transport, own
from celeriac.transports.sqlite.connection import SQLiteFile, WriteLock, path_from_url

if TYPE_CHECKING:
    from celeriac.backends.base import ResultBackend
    from celeriac.beat.store import BeatStore, TickSender
    from celeriac.brokers.base import Broker
    from celeriac.control.mailbox import Mailbox
    from celeriac.events.channel import EventChannel
    from celeriac.transports.sqlite.backend import SQLiteBackend
    from celeriac.transports.sqlite.beat_store import SQLiteBeatStore
    from celeriac.transports.sqlite.broker import SQLiteBroker


class SQLiteTransport(Transport):
    schemes = ("sqlite",)
    results_by_default = True

    def __init__(self, url: str) -> None:
        super().__init__(url)
        self.path = path_from_url(url)
        self._write_lock = WriteLock()
        self._files: list[SQLiteFile] = []
        self._brokers: list[SQLiteBroker] = []
        self._stores: list[SQLiteBeatStore] = []
        self._backends: list[SQLiteBackend] = []

    @classmethod
    def server_key(cls, url: str) -> str:
        return path_from_url(url)

    def _file(
        self,
        schema: str,
        error: type[CeleriacError],
        upgrade: Callable[[sqlite3.Connection], None] | None = None,
    ) -> SQLiteFile:
        db = SQLiteFile(self.path, schema, error, self._write_lock, upgrade)
        self._files.append(db)
        return db

    def _open_broker(self, transport_options: dict[str, Any]) -> Broker:
        from celeriac.transports.sqlite import broker

        made = broker.SQLiteBroker(
            self.url, transport_options, db=self._file(broker.SCHEMA, BrokerError)
        )
        self._brokers.append(made)
        return made

    def _open_backend(self, url: str, config: BackendConfig) -> ResultBackend:
        from celeriac.transports.sqlite import backend

        made = backend.SQLiteBackend(
            url,
            db=self._file(backend.SCHEMA, BackendError, backend.upgrade),
            serializer=config.serializer,
            accept=config.accept,
            expires=config.expires,
            transport_options=config.transport_options,
        )
        self._backends.append(made)
        return made

    def _open_beat_store(self, transport_options: dict[str, Any]) -> BeatStore:
        from celeriac.transports.sqlite import beat_store

        made = beat_store.SQLiteBeatStore(
            self.url, transport_options, db=self._file(beat_store.SCHEMA, BrokerError)
        )
        self._stores.append(made)
        return made

    def _open_mailbox(self, transport_options: dict[str, Any]) -> Mailbox:
        from celeriac.transports.sqlite import mailbox

        return mailbox.SQLiteMailbox(self._file(mailbox.SCHEMA, BrokerError))

    def _open_events(self, config: EventConfig) -> EventChannel:
        from celeriac.transports.sqlite import events

        db = self._file(events.SCHEMA, BrokerError)
        return events.SQLiteEventChannel(db, config.retention)

    def tick_sender(self, broker: Broker, store: BeatStore) -> TickSender:
        """Beat's tick and its message in one transaction: both live in this file."""
        from celeriac.transports.sqlite.beat_store import SQLiteTickSender

        mine, ours = own(self._brokers, broker), own(self._stores, store)
        if mine is not None and ours is not None:
            return SQLiteTickSender(mine, ours)
        return super().tick_sender(broker, store)

    def combine(self, broker: Broker, backend: ResultBackend) -> Combined:
        """Results, acks, the next fetch and its states in one transaction: one file."""
        from celeriac.transports.sqlite.combined import SQLiteCombined

        mine, ours = own(self._brokers, broker), own(self._backends, backend)
        if mine is not None and ours is not None:
            return SQLiteCombined(mine, ours)
        return super().combine(broker, backend)

    def _close_connections(self) -> None:
        files, self._files = self._files, []
        for db in files:
            db.close()
