"""The broker interface: leased delivery.

A message is *published* to a queue, or through an exchange to the queues bound to it,
optionally not before an ETA (the broker holds it, never a worker): one
:class:`~celeriac.protocol.publication.Publication` says all of that. A consumer *fetches*
messages under a lease: until the lease ends nobody else gets them. The consumer then *acks*
(done), *requeues* (give back, optionally later), *extends* the lease (still working on it) or
*dead-letters* it (with a reason, for a person to look at). A lease that ends without any of
these (its worker died) makes the message deliverable again, with its delivery count one higher.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, Protocol

from celeriac.exceptions import ConfigurationError, PublishRefused
from celeriac.protocol.message import Message
from celeriac.protocol.publication import Publication, Route
from celeriac.routing import Topology, no_queue_bound
from celeriac.transports.options import BROKER, parse_options

if TYPE_CHECKING:
    from celeriac.transports.base import Transport

DEFAULT_VISIBILITY_TIMEOUT = 30.0


class BrokerOptions(Protocol):
    """What the base class reads of a transport's options object (``transports/<name>/options.py``:
    a frozen dataclass of its ``broker_transport_options``)."""

    @property
    def visibility_timeout(self) -> float:
        """Seconds a lease lasts unless renewed."""
        ...


@dataclass(slots=True)
class Delivery:
    """A message handed to a consumer under a lease."""

    message: Message
    queue: str
    #: The broker's handle for ack/requeue/extend; opaque to everyone else.
    tag: Any
    #: 1 on first delivery; more when a lease ran out or the message was requeued.
    delivery_count: int = 1
    #: The task's state in the result backend as the broker read it in the same step as the
    #: delivery ("" when none is stored), or None when it did not look (see
    #: :meth:`Broker.share_results`).
    stored_state: str | None = None

    @property
    def redelivered(self) -> bool:
        return self.delivery_count > 1


@dataclass(slots=True)
class DeadLetter:
    """A message a worker gave up on, with the reason."""

    id: Any
    queue: str
    reason: str
    failed_at: float
    message: Message


class Broker(ABC):
    """Carries task messages from clients to workers with at-least-once delivery."""

    #: AMQP's rule (a higher number is served first). Celery's Redis layout serves a *lower*
    #: number first, and a broker speaking that layout keeps that rule for interop.
    priority_higher_first: bool = True
    #: The app's ``task_queues``: what exchanges, bindings and broadcast queues mean here.
    topology: Topology = Topology()
    #: Whether :meth:`requeue` puts a message back in its place (else at the back: RabbitMQ's
    #: classic queues, where a message is sent again to carry its delivery count).
    requeue_keeps_place: ClassVar[bool] = True
    #: Whether a lease lives and dies with the connection that took it (AMQP: the channel), so
    #: another connection can neither renew nor give it back.
    leases_follow_connection: ClassVar[bool] = False
    #: The most messages one :meth:`publish_many` call is given: longer batches are split
    #: into calls of this size (:func:`celeriac.sending.publish`), each its own round trip.
    #: None: no limit. A broker whose batch holds a lock or blocks a server sets one.
    max_batch: ClassVar[int | None] = None
    #: The transport whose connections this broker uses (set when it hands the broker out).
    transport: Transport | None = None
    #: The transport's options class: ``broker_transport_options`` are parsed into it, and an
    #: unknown key is a :class:`ConfigurationError`.
    options_class: ClassVar[type[BrokerOptions]]

    def __init__(self, url: str, transport_options: dict[str, Any] | None = None) -> None:
        self.url = url
        self.options = parse_options(self.options_class, transport_options, url=url, setting=BROKER)
        self.visibility_timeout = self.options.visibility_timeout

    @abstractmethod
    def publish(self, publication: Publication) -> None:
        """Store the message where its route leads; not deliverable before its ``eta``.

        Returns only once the broker has the message; raises :class:`BrokerError` otherwise.
        """

    def publish_many(self, publications: Sequence[Publication]) -> None:
        """Publish several messages; brokers that can do it in one round trip override this.

        On error some may have been published: the caller retries the whole batch, and
        duplicates are the at-least-once kind (same task ids).
        """
        for publication in publications:
            self.publish(publication)

    @abstractmethod
    def fetch(self, queues: Sequence[str], limit: int, *, timeout: float) -> list[Delivery]:
        """Lease up to ``limit`` ready messages, waiting up to ``timeout`` s for the first."""

    def arrived(self, queues: Sequence[str], limit: int) -> list[Delivery]:
        """Up to ``limit`` messages the server already sent this consumer (AMQP's prefetched
        deliveries), leased as :meth:`fetch` leases them, taken without a round trip; none
        where every fetch is a round trip."""
        return []

    @abstractmethod
    def ack(self, deliveries: Sequence[Delivery]) -> None:
        """Remove finished messages for good."""

    def ack_and_fetch(
        self, acks: Sequence[Delivery], queues: Sequence[str], limit: int, *, timeout: float
    ) -> list[Delivery]:
        """:meth:`ack`, then :meth:`fetch`: in one round trip where the broker can.

        When it raises, the caller cannot tell whether the acks went through, and must ack
        them again (harmless twice).
        """
        if acks:
            self.ack(acks)
        return self.fetch(queues, limit, timeout=timeout) if limit > 0 else []

    @abstractmethod
    def requeue(
        self, delivery: Delivery, *, delay_until: float | None = None, count: bool = True
    ) -> None:
        """Give a message back, deliverable now or at ``delay_until``.

        ``count=False`` means the message was never worked on (a worker shutting down returns its
        prefetched messages), so the delivery does not count towards ``worker_max_deliveries``.
        """

    @abstractmethod
    def extend(self, deliveries: Sequence[Delivery]) -> None:
        """Renew the lease of messages still being worked on by a full visibility timeout."""

    @abstractmethod
    def dead_letter(self, delivery: Delivery, reason: str) -> None:
        """Move a message to the dead-letter store with a reason; it is not delivered again."""

    @abstractmethod
    def purge(self, queue: str) -> int:
        """Delete every message waiting on ``queue`` (ready or delayed); returns how many."""

    @abstractmethod
    def depth(self, queue: str) -> int:
        """Messages on ``queue`` that are ready, delayed or leased."""

    def oldest_age(self, queue: str) -> float | None:
        """Seconds the oldest ready message of ``queue`` has waited, 0.0 for an empty queue;
        None where the broker cannot tell without consuming (the default)."""
        return None

    def ready(self, queue: str) -> int:
        """Messages on ``queue`` a fetch could take now (neither delayed nor leased): the
        waiting work an autoscaler reads. Brokers that can count it override this."""
        return self.depth(queue)

    @abstractmethod
    def dead_letters(self, limit: int = 100) -> list[DeadLetter]:
        """The oldest dead-lettered messages."""

    @abstractmethod
    def replay_dead_letters(self, ids: Sequence[Any] | None = None) -> int:
        """Publish dead letters (all, or those with ``ids``) to their queues again."""

    @abstractmethod
    def purge_dead_letters(self) -> int:
        """Delete every dead letter; returns how many."""

    def local_targets(self, route: Route) -> list[str]:
        """The queues a publish on ``route`` reaches, for brokers that route themselves (SQLite,
        memory).

        Bindings come from the app's ``task_queues``; broadcast needs pub/sub, so it is an error.
        """
        if route.exchange is None:
            self.refuse_broadcast([route.name])
            return [route.name]
        targets = self.topology.bound(route)
        if not targets:
            raise PublishRefused(no_queue_bound(route))
        return targets

    def refuse_broadcast(self, queues: Sequence[str]) -> None:
        """Brokers without pub/sub cannot give each worker its own copy: say so."""
        for q in queues:
            if self.topology.fanout_bound(q):
                raise ConfigurationError(
                    f"{q!r} is bound to a fanout exchange (a broadcast): that needs a broker "
                    "with pub/sub (redis:// or amqp://)"
                )

    def stop_consuming(self, queues: Sequence[str]) -> None:  # noqa: B027 - pull brokers
        """No longer fetch from ``queues`` (remote control's ``cancel_consumer``). A broker that
        pushes to subscribers (RabbitMQ) cancels them and gives back what they received and
        nobody fetched; the others take only what a fetch names and need nothing."""

    def reserve_rate_slot(self, key: str, interval: float) -> float | None:
        """Reserve the next start time for a rate limit shared by every worker.

        Slots are ``interval`` seconds apart; the return value is when the caller's slot begins
        (unix seconds). None means this broker cannot share a limit: workers then limit alone.
        """
        return None

    def close(self) -> None:
        """Release what this broker holds in this process; the last part of a transport to
        close closes its connections."""
        transport, self.transport = self.transport, None
        if transport is not None:
            transport.give_back(self)
