"""``broker_transport_options`` for ``postgresql://`` (the broker, its beat store, events and
remote control read them). Results take no ``result_backend_transport_options`` (the base
:class:`~celeriac.backends.base.BackendOptions`): the schema is named in the URL
(``?schema=``), as every part of one database must agree on it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from celeriac.brokers import dead_letters
from celeriac.brokers.base import DEFAULT_VISIBILITY_TIMEOUT
from celeriac.transports.options import KOMBU_RETRY


@dataclass(frozen=True, slots=True)
class PostgresOptions:
    #: s a lease lasts unless the worker renews it (a running task's is renewed), so how long a
    #: dead worker's messages wait
    visibility_timeout: float = DEFAULT_VISIBILITY_TIMEOUT
    #: s an idle fetch waits on LISTEN before it claims again anyway (a NOTIFY wakes it at once;
    #: delayed messages and lapsed leases wake it when they come due)
    polling_interval: float = 2.0
    #: dead letters kept at most, the oldest dropped first (None or 0: no cap)
    dead_letter_max_count: int | None = dead_letters.MAX_COUNT
    #: s a dead letter is kept (None or 0: no limit)
    dead_letter_max_age: float | None = dead_letters.MAX_AGE

    #: kombu's names for its SQLAlchemy transport (``sqla+postgresql://``) that mean nothing
    #: here: its retry policy (we reconnect on the next call), table names (ours are fixed, in
    #: the URL's schema), ``body_encoding`` and ``deadletter_queue`` (dead letters have a table).
    KOMBU_ONLY: ClassVar[frozenset[str]] = KOMBU_RETRY | {
        "retry_errors",
        "queue_tablename",
        "message_tablename",
        "body_encoding",
        "deadletter_queue",
    }
