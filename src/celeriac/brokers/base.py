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
from typing import TYPE_CHECKING, Any

from celeriac.exceptions import BrokerError, ConfigurationError
from celeriac.protocol.message import Message
from celeriac.protocol.publication import Publication, Route
from celeriac.routing import Topology, no_queue_bound

if TYPE_CHECKING:
    from celeriac.backends.base import EncodedResult, ResultBackend

DEFAULT_VISIBILITY_TIMEOUT = 30.0


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

    #: True when several processes can share the broker (not the in-memory one).
    shared_between_processes: bool = True
    #: AMQP's rule (a higher number is served first). Celery's Redis layout serves a *lower*
    #: number first, and a broker speaking that layout keeps that rule for interop.
    priority_higher_first: bool = True
    #: The app's ``task_queues``: what exchanges, bindings and broadcast queues mean here.
    topology: Topology = Topology()

    def __init__(self, url: str, transport_options: dict[str, Any] | None = None) -> None:
        self.url = url
        self.transport_options = dict(transport_options or {})
        self.visibility_timeout = float(
            self.transport_options.get("visibility_timeout", DEFAULT_VISIBILITY_TIMEOUT)
        )

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

    @abstractmethod
    def ack(self, deliveries: Sequence[Delivery]) -> None:
        """Remove finished messages for good."""

    #: Whether :meth:`ack_and_fetch` takes results to store (see :meth:`share_results`).
    carries_results = False

    def ack_and_fetch(
        self,
        acks: Sequence[Delivery],
        queues: Sequence[str],
        limit: int,
        *,
        timeout: float,
        results: Sequence[EncodedResult] = (),
    ) -> list[Delivery]:
        """Store ``results``, :meth:`ack`, then :meth:`fetch`: in one round trip where the
        broker can. Only a broker that :attr:`carries_results` takes ``results``.

        When it raises, the caller cannot tell whether ``results`` and ``acks`` went through,
        and must store and ack them again (both are harmless twice).
        """
        if results:
            raise TypeError(f"{type(self).__name__} does not store results")
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
            raise BrokerError(no_queue_bound(route))
        return targets

    def refuse_broadcast(self, queues: Sequence[str]) -> None:
        """Brokers without pub/sub cannot give each worker its own copy: say so."""
        for q in queues:
            if self.topology.fanout_bound(q):
                raise ConfigurationError(
                    f"{q!r} is bound to a fanout exchange (a broadcast): that needs a broker "
                    "with pub/sub (redis:// or amqp://)"
                )

    def share_results(self, backend: ResultBackend) -> bool:
        """Let this broker work on ``backend``'s results in its own calls, when both live in
        one place: :meth:`fetch` then reads each delivered task's state (deliveries carry
        :attr:`Delivery.stored_state`, saving the worker a lookup per batch) and
        :meth:`ack_and_fetch` takes results to store (:attr:`carries_results`). True when it
        will."""
        return False

    def reserve_rate_slot(self, key: str, interval: float) -> float | None:
        """Reserve the next start time for a rate limit shared by every worker.

        Slots are ``interval`` seconds apart; the return value is when the caller's slot begins
        (unix seconds). None means this broker cannot share a limit: workers then limit alone.
        """
        return None

    def close(self) -> None:  # noqa: B027 - optional for brokers holding nothing
        """Release connections held by this process."""
