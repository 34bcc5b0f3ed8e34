"""``broker_transport_options`` for ``memory://`` (the broker and its beat store read them).

``memory://`` results take no ``result_backend_transport_options`` (the base
:class:`~celeriac.backends.base.BackendOptions`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from celeriac.brokers import dead_letters
from celeriac.brokers.base import DEFAULT_VISIBILITY_TIMEOUT
from celeriac.transports.options import KOMBU_RETRY


@dataclass(frozen=True, slots=True)
class MemoryOptions:
    #: s a lease lasts unless the worker renews it (a running task's is renewed)
    visibility_timeout: float = DEFAULT_VISIBILITY_TIMEOUT
    #: dead letters kept at most, the oldest dropped first (None or 0: no cap)
    dead_letter_max_count: int | None = dead_letters.MAX_COUNT
    #: s a dead letter is kept (None or 0: no limit)
    dead_letter_max_age: float | None = dead_letters.MAX_AGE

    #: kombu's names for its memory transport that mean nothing here: the connection retry
    #: policy (nothing to connect to), ``polling_interval`` (a waiting fetch is woken by the
    #: publish itself), ``body_encoding`` and ``deadletter_queue`` (messages are kept as
    #: objects; dead letters have their own store).
    KOMBU_ONLY: ClassVar[frozenset[str]] = KOMBU_RETRY | {
        "polling_interval",
        "body_encoding",
        "deadletter_queue",
    }
