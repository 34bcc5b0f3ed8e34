"""Options of the Redis transport: :class:`RedisOptions` for ``broker_transport_options`` (the
broker and the beat store read them), :class:`RedisBackendOptions` for
``result_backend_transport_options``. Both carry the connection's options
(:class:`RedisConnectionOptions`), which :func:`.connection.connect` reads.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, ClassVar, Literal

from celeriac.brokers import dead_letters
from celeriac.brokers.base import DEFAULT_VISIBILITY_TIMEOUT
from celeriac.transports.options import KOMBU_RETRY

#: kombu's Redis transport options that mean nothing to Celeriac: its own key names and sweep
#: throttles (the layout and the sweep are fixed, see ``broker.py``), fanout and priority
#: layout switches (we speak kombu's current defaults), connection pool and keepalive tuning we
#: do not pass on (commands are always retried on a timeout), and the retry policy of kombu's
#: ``Connection`` (``max_retries`` is ours: see below).
KOMBU_REDIS = (KOMBU_RETRY - {"max_retries"}) | {
    "sep",
    "ack_emulation",
    "unacked_key",
    "unacked_index_key",
    "unacked_mutex_key",
    "unacked_mutex_expire",
    "unacked_restore_limit",
    "unacked_restore_interval",
    "unacked_restore_throttle",
    "fanout_prefix",
    "fanout_patterns",
    "socket_keepalive_options",
    "queue_order_strategy",
    "max_connections",
    "retry_on_timeout",
    "priority_steps",
    "client_name",
    "reauth_check_interval",
    "body_encoding",
    "deadletter_queue",
    "min_other_sentinels",
    "sentinel_fanout_compat",
}


def _no_kwargs() -> Mapping[str, Any]:
    return MappingProxyType({})


@dataclass(frozen=True, slots=True)
class RedisConnectionOptions:
    """How to connect: read for the broker, the beat store and the result backend alike."""

    #: put in front of every key and channel, as kombu and Celery do; None: the URL's
    #: ``global_keyprefix`` query parameter, else no prefix (this option wins over the URL)
    global_keyprefix: str | None = None
    #: s a command may wait for its reply
    socket_timeout: float = 10.0
    #: s a connection may take to open
    socket_connect_timeout: float = 5.0
    #: TCP keepalive on ``redis://`` and ``rediss://`` connections
    socket_keepalive: bool = True
    #: s a pooled connection may sit idle before it is checked with a PING on next use
    health_check_interval: float = 25.0
    #: times a command is sent again after a connection error, with a backoff from 50 ms
    #: doubling to ``retry_cap``: about 8 s of attempts, enough to ride out a Redis restart
    max_retries: int = 8
    #: s, the longest pause between two of those attempts
    retry_cap: float = 2.0
    #: ``sentinel://`` URLs: the name of the monitored master; None: the URL's ``master_name``
    #: query parameter (this option wins over the URL)
    master_name: str | None = None
    #: ``sentinel://`` URLs: keyword arguments for the connections to the sentinels themselves
    sentinel_kwargs: Mapping[str, Any] = field(default_factory=_no_kwargs)


@dataclass(frozen=True, slots=True)
class RedisOptions(RedisConnectionOptions):
    """``broker_transport_options`` of ``redis://``, ``rediss://``, ``redis+socket://`` and
    ``sentinel://`` brokers."""

    #: s a lease lasts unless the worker renews it (a running task's is renewed)
    visibility_timeout: float = DEFAULT_VISIBILITY_TIMEOUT
    #: s an idle consumer waits before looking at queues only Celery producers write to
    #: (Celeriac producers wake it at once); at most 5, so a wait never outlasts the socket
    #: timeout
    polling_interval: float = 0.1
    #: s between sweeps that restore expired leases; None: 1, or half the visibility timeout
    #: if that is shorter
    sweep_interval: float | None = None
    #: s after which a delivery abandoned by a *Celery* worker is restored (kombu's default; 0
    #: turns it off)
    celery_visibility_timeout: float = 3600.0
    #: s a publish (``delay()``, ``apply_async()``, a worker's follow-ups) may take, reconnections
    #: and retries included, before it raises BrokerError
    publish_timeout: float = 5.0
    #: ``"queue"``: Celery's way, onto the list with the ``eta`` header, so that stock Celery
    #: workers on the queue hold it as they do; a Celeriac fetch that pops it early parks it in
    #: the sorted set (safe in a mixed fleet). ``"broker"``: into the sorted set at once (only
    #: Celeriac workers move due ones: for queues no Celery worker consumes)
    delayed_delivery: Literal["broker", "queue"] = "queue"
    #: dead letters kept at most, the oldest dropped first (None or 0: no cap)
    dead_letter_max_count: int | None = dead_letters.MAX_COUNT
    #: s a dead letter is kept (None or 0: no limit)
    dead_letter_max_age: float | None = dead_letters.MAX_AGE

    KOMBU_ONLY: ClassVar[frozenset[str]] = KOMBU_REDIS


@dataclass(frozen=True, slots=True)
class RedisBackendOptions(RedisConnectionOptions):
    """``result_backend_transport_options`` of Redis result backends."""

    #: Besides kombu's names (Celery's docs show broker options such as ``visibility_timeout``
    #: given here too, and one dict is often given for both settings), the options of Celery's
    #: Redis result backend that mean nothing here: its retry policy and extra connection
    #: errors (ours are the connection's, above), ``result_chord_ordered`` (header results are
    #: always kept in order, Celery's default).
    KOMBU_ONLY: ClassVar[frozenset[str]] = KOMBU_REDIS | {
        "visibility_timeout",
        "polling_interval",
        "retry_policy",
        "additional_connection_errors",
        "result_chord_ordered",
    }
