"""The RabbitMQ broker (AMQP 0-9-1): Celery's queue layout, confirms, delays parked in RabbitMQ.

Layout shared with Celery (PROTOCOL.md §3.1), so Celery and Celeriac clients and workers share
queues: for a queue ``q`` a durable direct exchange ``q`` and a durable queue ``q`` bound with
routing key ``q`` (for ``celery``: exchange ``celery``, queue ``celery``); messages are published
to the default exchange with routing key ``q``, persistent, with the task headers as AMQP
headers and the raw serialized body. Queue arguments must match every other peer's, so they are
only what Celery would add: ``x-max-priority`` when the ``max_priority`` transport option is set
(Celery's ``task_queue_max_priority``; Celeriac has no such setting yet) and
``x-queue-type: quorum`` when ``queue_type`` is ``"quorum"``. Queues of ``task_queues`` are
declared with their own exchange (direct, topic, fanout), binding and ``queue_arguments``, and
a route that names an exchange publishes to it with its routing key (``amqp_topology``).

Every publish waits for the broker's confirm (``mandatory`` too, so an unroutable message is
an error, not a silent drop); a publish interrupted by a lost connection is sent again on the
reopened one until ``publish_timeout`` runs out, then raises :class:`BrokerError`. The parts:

* :mod:`.publisher`: confirmed publishing on connections lent to the calling thread;
* :mod:`.declarations`: queues as Celery declares them, the delay cascade, dead letters;
* :mod:`.inbox`: consuming, leases (the channel) and acks;
* :mod:`.admin`: counting, purging, reading and replaying dead letters;
* :mod:`.connection`: the link, one connection owned by an I/O thread, under all but publishing.

Transport options (``broker_transport_options``): :class:`.options.AMQPOptions`.
"""

from __future__ import annotations

import functools
import logging
import math
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from celeriac.brokers.base import Broker, DeadLetter, Delivery
from celeriac.exceptions import BrokerError, ConfigurationError
from celeriac.protocol.message import Message
from celeriac.protocol.publication import Publication, Route
from celeriac.transports.amqp.admin import Admin
from celeriac.transports.amqp.connection import Link, Lost
from celeriac.transports.amqp.dead_letters import dead_letter_arguments
from celeriac.transports.amqp.declarations import (
    DEAD_EXCHANGE,
    MAX_DELAY,
    Declarations,
    delay_exchange,
    delay_routing_key,
)
from celeriac.transports.amqp.inbox import Inbox
from celeriac.transports.amqp.options import AMQPOptions
from celeriac.transports.amqp.publisher import Outgoing, Unroutable
from celeriac.transports.amqp.wire import HDR_COUNT, dead_headers, properties

if TYPE_CHECKING:
    from celeriac.backends.base import EncodedResult
    from celeriac.transports.amqp.rpc_backend import RPCBackend

logger = logging.getLogger("celeriac.broker.amqp")


@dataclass(frozen=True)
class _Send:
    """A message to publish and how to declare where it goes (on the I/O thread)."""

    item: Outgoing
    declare: Callable[[], None]


class AMQPBroker(Broker):
    """Leased delivery over RabbitMQ in Celery's layout (see the module docstring)."""

    options_class = AMQPOptions
    options: AMQPOptions
    leases_follow_connection = True
    requeue_keeps_place = False  # a classic queue's message is sent again with its count

    def __init__(
        self, url: str, transport_options: dict[str, Any] | None = None, *, link: Link
    ) -> None:
        super().__init__(url, transport_options)
        opts = self.options
        self.max_priority = opts.max_priority
        self.queue_type = opts.queue_type
        if self.queue_type == "quorum" and self.max_priority:
            logger.warning("quorum queues ignore priorities: max_priority is not applied")
            self.max_priority = None
        self.publish_timeout = opts.publish_timeout
        #: tasks' publishes wait for RabbitMQ's confirm (requeues, dead letters and results
        #: always do: they stand for a message already taken)
        self.confirm_publish = opts.confirm_publish
        self.dead_letter_queue = opts.dead_letter_queue
        self.link = link
        self._closed = False
        self.declarations = Declarations(
            link,
            lambda: self.topology,
            max_priority=self.max_priority,
            queue_type=self.queue_type,
            dead_letter_queue=self.dead_letter_queue,
            dead_letter_arguments=dead_letter_arguments(opts),
        )
        self.inbox = Inbox(link, self.declarations, lambda: self.topology)
        self.admin = Admin(link, self.declarations, self.inbox, self._replay)
        #: per thread: while publish_many runs, the sends it collects
        self._local = threading.local()
        self._dead_lock = threading.Lock()
        self._last_dead_id = 0

    def queue_arguments(self, queue: str | None = None) -> dict[str, Any]:
        return self.declarations.queue_arguments(queue)

    # -- publishing ------------------------------------------------------------------------------
    def publish(self, publication: Publication) -> None:
        message, route = publication.message, publication.route
        priority, eta = publication.priority, publication.eta
        if route.exchange is None and self.topology.is_broadcast(route.name):
            route = self.topology.destination(route.name)
        if route.exchange is not None and eta is not None and eta > time.time():
            # The delay cascade ends in one queue: fan out to the bound queues before it.
            if route.exchange_type == "fanout":
                raise ConfigurationError(f"broadcast {route.name!r}: it cannot be delayed")
            for target in self.local_targets(route):
                self.publish(Publication(message, Route(target), priority, eta))
            return
        self._send(message, route, priority, eta, dict(message.headers), self.confirm_publish)

    def _send(
        self,
        message: Message,
        route: Route,
        priority: int,
        eta: float | None,
        headers: dict[str, Any],
        confirm: bool = True,
    ) -> None:
        delay = 0 if eta is None else math.ceil(eta - time.time())
        target = self.topology.physical(route.name)  # a broadcast's: this node's queue
        if delay > 0:
            delay = min(delay, MAX_DELAY)
            level = delay.bit_length() - 1
            exchange, key = delay_exchange(level), delay_routing_key(delay, target)
        elif route.exchange is not None:
            exchange, key = route.exchange, route.routing_key
        else:
            exchange, key = "", target
        # A parked message must not expire half-way down the cascade (it would skip the rest of
        # its wait): the ``expires`` header, which workers check, stays authoritative.
        props = properties(message, priority=priority, headers=headers, keep_expiration=not delay)
        declarations = self.declarations

        def declare() -> None:
            if route.exchange is not None:
                declarations.route(route)
            else:
                declarations.queue(route.name, delays=delay > 0)

        send = _Send(Outgoing(message.body, exchange, key, props), declare)
        batch: list[_Send] | None = getattr(self._local, "batch", None)
        if batch is not None:
            batch.append(send)  # publish_many sends it with the rest
        else:
            self._send_all([send], confirm)

    def publish_many(self, publications: Sequence[Publication]) -> None:
        """Publish all, then wait for all their confirms: one round trip, not one per message.

        Each message goes through :meth:`publish` (routing, ``reply_to``), which collects
        instead of sending while the batch is open.
        """
        if len(publications) < 2:
            super().publish_many(publications)
            return
        batch: list[_Send] = []
        self._local.batch = batch
        try:
            for publication in publications:
                self.publish(publication)
        finally:
            self._local.batch = None
        if batch:
            self._send_all(batch, self.confirm_publish)

    def _send_all(self, sends: list[_Send], confirm: bool = True) -> None:
        """Publish on the process's publishing connection, a batch at once: declare what was
        not confirmed yet, send, and declare again and send again once what came back (a queue
        or exchange deleted under us)."""
        deadline = time.monotonic() + self.publish_timeout
        publisher = self.link.publisher
        declarations = self.declarations
        for attempt in (1, 2):
            declares = {
                s.item.route: s.declare for s in sends if s.item.route not in declarations.routed
            }
            if declares:
                self._declare_all(list(declares.values()), deadline)
            try:
                returned = publisher.send([s.item for s in sends], deadline, confirm=confirm)
            except Unroutable as exc:  # an exchange deleted under us
                returned = exc.items
                if attempt == 2:
                    raise
            bounced = {id(item) for item in returned}
            for s in sends:
                if id(s.item) not in bounced:
                    declarations.remember_route(s.item.route)
            if not returned:
                return
            if attempt == 2:
                raise BrokerError(
                    f"RabbitMQ could not route a message to {returned[0].routing_key!r}, "
                    "declared again"
                )
            # A queue deleted under us: declare again, and send what came back once more.
            declarations.forget()
            sends = [s for s in sends if id(s.item) in bounced]

    def _declare_all(self, declares: list[Callable[[], None]], deadline: float) -> None:
        """Run the declares on the link, again after a lost connection until ``deadline``;
        BrokerError when they cannot be made."""

        def run() -> None:
            for declare in declares:
                declare()

        pause = 0.05
        while True:
            remaining = max(0.01, deadline - time.monotonic())
            try:
                self.link.run(run, remaining, "declaring for a publish")
                return
            except Lost as exc:
                if time.monotonic() + pause >= deadline:
                    raise BrokerError(f"declaring for a publish failed: {exc}") from exc
                time.sleep(pause)
                pause = min(pause * 2, 1.0)

    # -- consuming -------------------------------------------------------------------------------
    def fetch(self, queues: Sequence[str], limit: int, *, timeout: float) -> list[Delivery]:
        deadline = time.monotonic() + timeout
        while True:
            got = self._counted(self.inbox.fetch(queues, limit, timeout=timeout))
            timeout = deadline - time.monotonic()
            if got or timeout <= 0:
                return got

    def arrived(self, queues: Sequence[str], limit: int) -> list[Delivery]:
        return self._counted(self.inbox.arrived(queues, limit))

    def _counted(self, deliveries: list[Delivery]) -> list[Delivery]:
        """Deliveries whose count holds, after putting the others back with it.

        A classic queue says only *whether* a message was delivered before (``redelivered``),
        not how often: a task that kills its worker every time would come back as "delivery 2"
        forever and never reach ``worker_max_deliveries``. So a redelivered message is not run
        from here: it is published again carrying its count (``x-celeriac-deliveries``) and
        this copy is acknowledged; the new copy runs, counted, when it comes round. (Quorum
        queues count in ``x-delivery-count``; a broadcast copy is this node's alone and runs.)
        """
        if not any(d.tag.redelivered and not d.tag.counted for d in deliveries):
            return deliveries
        keep = []
        topology = self.topology
        for d in deliveries:
            if not d.tag.redelivered or d.tag.counted or topology.fanout_bound(d.queue):
                keep.append(d)
                continue
            message = d.message
            headers = {**message.headers, HDR_COUNT: d.delivery_count - 1}
            priority = int(message.properties.get("priority") or 0)
            logger.info(
                "AMQP: %s[%s] was delivered before (now delivery %d); sent again with its count",
                message.headers.get("task"),
                message.task_id,
                d.delivery_count,
            )
            self._send(message, Route(d.queue), priority, None, headers)
            self.inbox.ack([d], written=True)
        return keep

    def ack(self, deliveries: Sequence[Delivery]) -> None:
        self.inbox.ack(deliveries)

    def reply_ack_fetch(
        self,
        rpc: RPCBackend,
        results: Sequence[EncodedResult],
        acks: Sequence[Delivery],
        queues: Sequence[str],
        limit: int,
        *,
        timeout: float,
    ) -> list[Delivery]:
        """``rpc://`` replies, then acks, on the tasks' channel; then fetch (see
        :meth:`.inbox.Inbox.reply_ack_fetch`)."""
        return self._counted(
            self.inbox.reply_ack_fetch(rpc, results, acks, queues, limit, timeout=timeout)
        )

    def extend(self, deliveries: Sequence[Delivery]) -> None:
        """Nothing to do: a delivery stays leased while its channel lives."""

    def stop_consuming(self, queues: Sequence[str]) -> None:
        failed: Exception | None = None
        for delivery in self.inbox.unsubscribe(queues):
            if failed is None:
                try:
                    self.requeue(delivery, count=False)  # received, never fetched: uncounted
                    continue
                except Exception as exc:  # raised below, once every delivery is given back
                    failed = exc
            # A republish failed: this one and the rest are rejected back into the queue (a
            # delivery too many counted on each) rather than held until the channel closes.
            self.inbox.give_back(delivery)
        if failed is not None:
            raise failed

    def requeue(
        self, delivery: Delivery, *, delay_until: float | None = None, count: bool = True
    ) -> None:
        if not self.inbox.current(delivery):
            return  # its channel died: RabbitMQ redelivers it
        later = delay_until is not None and delay_until > time.time()
        if not later and count and delivery.tag.counted:
            # Back in place; RabbitMQ counts it (x-delivery-count).
            self.inbox.give_back(delivery)
            return
        # On a classic queue, sent again carrying its count (see _counted): at the back.
        message = delivery.message
        headers = dict(message.headers)
        headers[HDR_COUNT] = delivery.delivery_count if count else delivery.delivery_count - 1
        priority = int(message.properties.get("priority") or 0)
        self._send(
            message, Route(delivery.queue), priority, delay_until if later else None, headers
        )
        self.inbox.ack([delivery], written=True)

    def dead_letter(self, delivery: Delivery, reason: str) -> None:
        if not self.inbox.current(delivery):
            return  # redelivered elsewhere: not both dead and running
        message = delivery.message
        headers = dead_headers(
            message.headers,
            reason=reason,
            queue=delivery.queue,
            failed_at=time.time(),
            dead_id=self._dead_id(),
            count=delivery.delivery_count,
        )
        props = properties(message, priority=0, headers=headers, keep_expiration=False)
        item = Outgoing(message.body, DEAD_EXCHANGE, delivery.queue, props)
        self._send_all([_Send(item, self.declarations.dead)])
        self.ack([delivery])

    def _dead_id(self) -> int:
        # Microseconds since the epoch: ordered, unique within a process, an int for the CLI.
        with self._dead_lock:
            self._last_dead_id = max(self._last_dead_id + 1, time.time_ns() // 1000)
            return self._last_dead_id

    def _replay(self, dead: Sequence[DeadLetter]) -> None:
        """Publish dead letters to their queues again, as they were first sent."""
        sends = []
        for d in dead:
            message = d.message
            priority = int(message.properties.get("priority") or 0)
            props = properties(message, priority=priority, headers=dict(message.headers))
            item = Outgoing(message.body, "", d.queue, props)
            sends.append(_Send(item, functools.partial(self.declarations.queue, d.queue)))
        self._send_all(sends)

    # -- administration --------------------------------------------------------------------------
    def purge(self, queue: str) -> int:
        return self.admin.purge(queue)

    def depth(self, queue: str) -> int:
        return self.admin.depth(queue)

    def ready(self, queue: str) -> int:
        return self.admin.ready(queue)

    def dead_letters(self, limit: int = 100) -> list[DeadLetter]:
        return self.admin.dead_letters(limit)

    def replay_dead_letters(self, ids: Sequence[Any] | None = None) -> int:
        return self.admin.replay_dead_letters(ids)

    def purge_dead_letters(self) -> int:
        return self.admin.purge_dead_letters()

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            super().close()
