"""What the broker declares on RabbitMQ: queues as Celery does, the delay cascade, dead letters.

Delayed messages (ETA, countdown, delayed requeues) wait in RabbitMQ, never in a worker: a
cascade of TTL queues, one per power-of-two second (``celeriac.delay.<N>.<q>``, TTL 2^N s)
linked by dead-letter exchanges ``celeriac.delay.<N>`` that route on the bits of the delay
written in the routing key, as Celery 5.5's native delayed delivery does (PROTOCOL.md §3.3).
The queues are per destination so that ``depth`` and ``purge`` see delayed messages; each queue
is also bound to Celery's ``celery_delayed_delivery`` exchange, so delayed messages from Celery
producers reach it. Delays are whole seconds, rounded up (never early).

Dead letters go to the exchange ``celeriac.dead`` (fanout) and its queue.

Server objects are durable, so each is declared once per process: :class:`Declarations`
remembers what it declared, and the routes whose publishes were confirmed (declared, since a
mandatory publish to nowhere comes back). The declaring methods run on the link's I/O thread.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import amqp.exceptions

from celeriac.exceptions import PublishRefused
from celeriac.protocol.publication import Route
from celeriac.routing import Topology
from celeriac.transports.amqp.connection import Link
from celeriac.transports.amqp.topology import (
    declare_exchange,
    declare_plain_queue,
    declare_queue,
    queue_arguments,
    queues_behind,
)

logger = logging.getLogger("celeriac.broker.amqp")

DELAY_BITS = 28
MAX_DELAY = 2**DELAY_BITS - 1
DEAD_EXCHANGE = "celeriac.dead"
CELERY_DELAYED_EXCHANGE = "celery_delayed_delivery"
#: routes remembered as confirmed at most (distinct delays make distinct routing keys)
_ROUTED_LIMIT = 4096


def delay_exchange(level: int) -> str:
    return f"celeriac.delay.{level}"


def delay_queue(level: int, queue: str) -> str:
    return f"celeriac.delay.{level}.{queue}"


def delay_routing_key(seconds: int, queue: str) -> str:
    """Celery's spelling: the delay as 28 binary digits separated by dots, then the queue."""
    return ".".join(f"{seconds:0{DELAY_BITS}b}") + "." + queue


def _bit_pattern(level: int, bit: str, tail: str) -> str:
    """Topic pattern matching ``bit`` at ``level`` (bit 27 is the first word)."""
    return "*." * (DELAY_BITS - 1 - level) + bit + "." + tail


class Declarations:
    """Declares on the link's ``admin`` channel, once per process (see the module docstring)."""

    def __init__(
        self,
        link: Link,
        topology: Callable[[], Topology],
        *,
        max_priority: int | None,
        queue_type: str,
        dead_letter_queue: str,
        dead_letter_arguments: dict[str, Any] | None = None,
    ) -> None:
        self.link = link
        self._topology = topology
        self.max_priority = max_priority
        self.queue_type = queue_type
        self.dead_letter_queue = dead_letter_queue
        #: ``x-max-length`` / ``x-message-ttl`` of the dead-letter queue (its caps), applied
        #: when it is first declared
        self.dead_letter_arguments = dead_letter_arguments or {}
        #: names this process declared
        self.declared: set[str] = set()
        self.delays: set[str] = set()
        #: (exchange, routing key) published to and confirmed
        self.routed: set[tuple[str, str]] = set()

    # -- arguments -----------------------------------------------------------------------------
    def queue_arguments(self, queue: str | None = None) -> dict[str, Any]:
        topology = self._topology()
        q = topology.queue(queue) if queue is not None else None
        max_priority = self.max_priority or topology.max_priority
        return queue_arguments(q, max_priority, self.queue_type)

    def level_arguments(self, level: int, queue: str) -> dict[str, Any]:
        args: dict[str, Any] = {"x-message-ttl": (2**level) * 1000}
        if level > 0:
            args["x-dead-letter-exchange"] = delay_exchange(level - 1)
        else:
            args["x-dead-letter-exchange"] = ""
            args["x-dead-letter-routing-key"] = queue
        if self.queue_type == "quorum":
            args.update(
                {
                    "x-queue-type": "quorum",
                    "x-overflow": "reject-publish",
                    "x-dead-letter-strategy": "at-least-once",
                }
            )
        return args

    # -- memo (any thread) ---------------------------------------------------------------------
    def remember_route(self, route: tuple[str, str]) -> None:
        if len(self.routed) >= _ROUTED_LIMIT:
            self.routed.clear()
        self.routed.add(route)

    def forget(self) -> None:
        """A queue was deleted under us: declare everything again before the next publish."""
        self.routed.clear()
        self.declared.clear()
        self.delays.clear()

    # -- declaring (on the I/O thread) ---------------------------------------------------------
    def queue(self, queue: str, *, delays: bool = False) -> None:
        """Declare ``queue`` as Celery does (and its delay cascade when ``delays``)."""
        if queue in self.declared and (not delays or queue in self.delays):
            return
        ch = self.link.channel("admin").channel
        topology = self._topology()
        try:
            if queue not in self.declared:
                declare_queue(ch, topology, queue, self.queue_arguments(queue))
                self.declared.add(queue)
            if delays and queue not in self.delays:
                self._cascade(ch, topology.physical(queue))
                self.delays.add(queue)
        except amqp.exceptions.PreconditionFailed as exc:
            # Refused for good (until someone declares it alike): not worth retrying.
            raise PublishRefused(
                f"queue {queue!r} exists with other arguments than "
                f"{self.queue_arguments(queue)} (RabbitMQ: {exc}); every peer must declare "
                "it alike (task_queues, max_priority, queue_type)"
            ) from exc

    def route(self, dest: Route) -> None:
        """Declare ``dest``'s exchange and the ``task_queues`` bound to it, before publishing."""
        assert dest.exchange is not None
        marker = "exchange:" + dest.exchange
        if marker in self.declared:
            return
        topology = self._topology()
        for queue in queues_behind(topology, dest):
            self.queue(queue)
        ch = self.link.channel("admin").channel
        known = topology.exchange(dest.exchange)
        try:
            declare_exchange(
                ch,
                dest.exchange,
                dest.exchange_type,
                durable=known.durable if known is not None else True,
                auto_delete=known.auto_delete if known is not None else False,
            )
        except amqp.exceptions.PreconditionFailed as exc:
            raise PublishRefused(
                f"exchange {dest.exchange!r} exists with another type than "
                f"{dest.exchange_type!r} (RabbitMQ: {exc}); declare it alike in task_queues"
            ) from exc
        self.declared.add(marker)

    def _cascade(self, ch: amqp.Channel, queue: str) -> None:
        if "" not in self.delays:  # the exchanges every queue's cascade shares
            for level in range(DELAY_BITS):
                declare_exchange(ch, delay_exchange(level), "topic")
            for level in range(DELAY_BITS - 1, 0, -1):
                ch.exchange_bind(
                    delay_exchange(level - 1), delay_exchange(level), _bit_pattern(level, "0", "#")
                )
            declare_exchange(ch, CELERY_DELAYED_EXCHANGE, "topic")
            self.delays.add("")
        for level in range(DELAY_BITS):
            name = delay_queue(level, queue)
            declare_plain_queue(ch, name, self.level_arguments(level, queue))
            tail = "*." * level + queue  # the lower bits, then the destination
            ch.queue_bind(name, delay_exchange(level), _bit_pattern(level, "1", tail))
        ch.queue_bind(queue, delay_exchange(0), _bit_pattern(0, "0", queue))
        ch.queue_bind(queue, CELERY_DELAYED_EXCHANGE, f"#.{queue}")

    def dead(self) -> None:
        marker = DEAD_EXCHANGE + "/" + self.dead_letter_queue
        if marker in self.declared:
            return
        ch = self.link.channel("admin").channel
        declare_exchange(ch, DEAD_EXCHANGE, "fanout")
        try:
            declare_plain_queue(ch, self.dead_letter_queue, self.dead_letter_arguments)
        except amqp.exceptions.PreconditionFailed as exc:
            # Declared before with other caps (or none): RabbitMQ refuses to change a queue's
            # arguments, so use it as it is and say how to cap it (a policy: see the README).
            logger.warning(
                "dead-letter queue %r exists with other arguments than %s (RabbitMQ: %s): "
                "using it as it is; cap it with a policy: rabbitmqctl set_policy "
                "celeriac-dead '^%s$' '{\"max-length\": N, \"message-ttl\": MS}' "
                "--apply-to queues",
                self.dead_letter_queue,
                self.dead_letter_arguments,
                exc,
                self.dead_letter_queue,
            )
            ch = self.link.channel("admin").channel  # the refusal closed the channel
            ch.queue_declare(self.dead_letter_queue, passive=True)
        ch.queue_bind(self.dead_letter_queue, DEAD_EXCHANGE, routing_key="")
        self.declared.add(marker)

    def queues_of(self, queue: str) -> list[str]:
        """``queue`` (its physical name) and its delay cascade."""
        queue = self._topology().physical(queue)
        return [queue] + [delay_queue(level, queue) for level in range(DELAY_BITS)]
