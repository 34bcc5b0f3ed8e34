"""The worker's combined path on one SQLite file: a batch settled and the next leased in one
transaction.

When the broker and the result backend live in the same file, a consumer that finishes a task
stores its result, acknowledges its message, leases the next and reads that task's stored state
(revoked? already succeeded?) in a single write transaction instead of three transactions and a
read. The order inside the transaction is the one the settler keeps everywhere (results before
acks), and since it commits or rolls back as a whole, an ack can never land without its result.

Measured on a 2-core machine (``bench/sqlite_vs_huey.py``, prefetch 1 per child): the three
commits per task were most of a child's CPU; one commit per task is what made the path cheap.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from typing import TYPE_CHECKING

from celeriac.transports.base import Combined
from celeriac.transports.sqlite.broker import ack_rows

if TYPE_CHECKING:
    from celeriac.backends.base import EncodedResult
    from celeriac.brokers.base import Delivery
    from celeriac.transports.sqlite.backend import SQLiteBackend
    from celeriac.transports.sqlite.broker import SQLiteBroker


class SQLiteCombined(Combined):
    """Results, acks, the next fetch and its stored states in one transaction (module doc)."""

    carries_results = True

    def __init__(self, broker: SQLiteBroker, backend: SQLiteBackend) -> None:
        super().__init__(broker, backend)
        self._broker = broker
        self._backend = backend
        self._schema_ready = False

    def fetch(self, queues: Sequence[str], limit: int, *, timeout: float) -> list[Delivery]:
        self._ensure_schema()
        return self._broker.fetch_within(queues, limit, timeout=timeout, then=self._read_states)

    def store_ack_fetch(
        self,
        results: Sequence[EncodedResult],
        acks: Sequence[Delivery],
        queues: Sequence[str],
        limit: int,
        *,
        timeout: float,
    ) -> list[Delivery]:
        self._ensure_schema()
        backend = self._backend

        def settle(conn: sqlite3.Connection) -> None:
            if results:
                backend.store_in(conn, results)
            if acks:
                ack_rows(conn, acks)

        return self._broker.fetch_within(
            queues,
            limit,
            timeout=timeout,
            first=settle if results or acks else None,
            then=self._read_states,
        )

    def _ensure_schema(self) -> None:
        # The results tables are created by the backend's first connection; the transaction
        # runs on the broker's.
        if not self._schema_ready:
            self._backend.db.open()
            self._schema_ready = True

    def _read_states(self, conn: sqlite3.Connection, deliveries: list[Delivery]) -> None:
        ids = [d.message.task_id for d in deliveries if d.message.task_id]
        found = self._backend.states_in(conn, ids)
        for d in deliveries:
            task_id = d.message.task_id
            if task_id:
                d.stored_state = found.get(task_id, "")
