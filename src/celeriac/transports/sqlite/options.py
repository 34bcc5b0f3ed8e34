"""``broker_transport_options`` for ``sqlite://`` (the broker and its beat store read them).

``sqlite://`` results take no ``result_backend_transport_options`` (the base
:class:`~celeriac.backends.base.BackendOptions`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from celeriac.brokers import dead_letters
from celeriac.brokers.base import DEFAULT_VISIBILITY_TIMEOUT
from celeriac.transports.options import KOMBU_RETRY


@dataclass(frozen=True, slots=True)
class SQLiteOptions:
    #: s a lease lasts unless the worker renews it (a running task's is renewed), so how long a
    #: dead worker's messages wait
    visibility_timeout: float = DEFAULT_VISIBILITY_TIMEOUT
    #: s between checks for new messages when idle; a check reads one counter and costs
    #: microseconds
    polling_interval: float = 0.005
    #: dead letters kept at most, the oldest dropped first (None or 0: no cap)
    dead_letter_max_count: int | None = dead_letters.MAX_COUNT
    #: s a dead letter is kept (None or 0: no limit)
    dead_letter_max_age: float | None = dead_letters.MAX_AGE

    #: kombu's names for its SQLAlchemy transport (``sqla+sqlite://``) that mean nothing here:
    #: the connection retry policy and ``retry_errors`` (writers wait on SQLite's busy timeout),
    #: its table names (ours are fixed: a kombu database cannot be shared anyway),
    #: ``body_encoding`` and ``deadletter_queue`` (dead letters have their own table).
    KOMBU_ONLY: ClassVar[frozenset[str]] = KOMBU_RETRY | {
        "retry_errors",
        "queue_tablename",
        "message_tablename",
        "body_encoding",
        "deadletter_queue",
    }
