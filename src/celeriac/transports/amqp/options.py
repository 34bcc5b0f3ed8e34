"""``broker_transport_options`` of ``amqp://`` and ``amqps://`` brokers.

The ``rpc://`` result backend takes no ``result_backend_transport_options`` (the base
:class:`~celeriac.backends.base.BackendOptions`): it rides on the broker's connection.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Literal

from celeriac.brokers import dead_letters
from celeriac.brokers.base import DEFAULT_VISIBILITY_TIMEOUT
from celeriac.transports.options import KOMBU_RETRY


@dataclass(frozen=True, slots=True)
class AMQPOptions:
    #: s, read by every broker; on RabbitMQ the lease is the channel, which has no timeout, so
    #: this changes nothing but how often a worker's (empty) lease renewal runs
    visibility_timeout: float = DEFAULT_VISIBILITY_TIMEOUT
    #: declare queues with ``x-max-priority`` (Celery's ``task_queue_max_priority``); None or
    #: 0: without (quorum queues ignore priorities: then it is not applied)
    max_priority: int | None = None
    #: ``"quorum"`` declares queues with ``x-queue-type: quorum``
    queue_type: Literal["classic", "quorum"] = "classic"
    #: s a publish may take, reconnections and resends included, before it raises BrokerError
    publish_timeout: float = 10.0
    #: s, the heartbeat interval asked of RabbitMQ (0: none); a ``heartbeat`` query parameter
    #: of the URL wins. The consuming connection's thread sends them, and gives the connection
    #: up when RabbitMQ was silent for two intervals; publishing connections ask for none and
    #: are replaced after half an interval unused
    heartbeat: float = 60.0
    #: s a connection may take to open; a ``connect_timeout`` (or ``timeout``) query parameter
    #: of the URL wins
    connect_timeout: float = 10.0
    #: the queue bound to the ``celeriac.dead`` exchange that dead letters are read from
    dead_letter_queue: str = "celeriac.dead"
    #: Celery's name: False publishes tasks without waiting for RabbitMQ's confirm (faster; a
    #: task written just before RabbitMQ or the connection fails is lost). Requeues, dead
    #: letters and ``rpc://`` results are confirmed either way
    confirm_publish: bool = True
    #: dead letters kept at most, the oldest dropped first (None or 0: no cap)
    dead_letter_max_count: int | None = dead_letters.MAX_COUNT
    #: s a dead letter is kept (None or 0: no limit)
    dead_letter_max_age: float | None = dead_letters.MAX_AGE

    #: kombu's names for its py-amqp transport that mean nothing here: connection arguments of
    #: py-amqp that we do not pass on (our connections set their own), and the retry policy of
    #: kombu's ``Connection`` (a lost connection is reopened with our own backoff); also our
    #: own ``publish_connections``, from when each publishing thread had a connection (one,
    #: shared, serves them all now).
    KOMBU_ONLY: ClassVar[frozenset[str]] = KOMBU_RETRY | {
        "publish_connections",
        "client_properties",
        "read_timeout",
        "write_timeout",
        "socket_settings",
        "channel_max",
        "frame_max",
        "locale",
    }
