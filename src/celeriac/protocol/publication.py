"""A message on its way out: what to send, where it goes, how urgent, not before when.

Every publish (a client's ``send_task``, a workflow's messages, a worker's retries, callbacks
and chord bodies) is one :class:`Publication`; brokers take nothing else
(:meth:`~celeriac.brokers.base.Broker.publish`). Where it goes is a :class:`Route`, which
:meth:`~celeriac.routing.Topology.destination` resolves from a queue name or an exchange and
routing key, following Celery's rules.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from celeriac.protocol.message import Message


@dataclass(frozen=True, slots=True)
class Route:
    """Where a message goes.

    ``exchange`` None means straight to the queue ``name`` (AMQP's default exchange, routing
    key ``name``). Otherwise the exchange, of ``exchange_type``, routes ``routing_key`` to the
    queues bound to it; ``name`` is then the queue the route was asked for, or the exchange's
    name when the route names only an exchange (what error messages show).
    """

    name: str
    exchange: str | None = None
    routing_key: str = ""
    exchange_type: str = "direct"

    @property
    def address(self) -> tuple[str, str]:
        """``(exchange, routing key)`` as AMQP publishes it and kombu records it in
        ``delivery_info``: the default exchange ``""`` and the queue's name, or the exchange's."""
        if self.exchange is None:
            return "", self.name
        return self.exchange, self.routing_key


@dataclass(frozen=True, slots=True)
class Publication:
    """One message to publish: on ``route``, with ``priority``, deliverable from ``eta`` (unix
    seconds; None: at once)."""

    message: Message
    route: Route
    priority: int = 0
    eta: float | None = None

    def to_wire(self) -> tuple[Any, ...]:
        """A plain tuple, for the pipe from a prefork child: pickling dataclasses runs Python
        code per field (it showed up as a fifth of the worker's CPU)."""
        m, r = self.message, self.route
        return (
            m.headers,
            m.properties,
            m.body,
            m.content_type,
            m.content_encoding,
            r.name,
            r.exchange,
            r.routing_key,
            r.exchange_type,
            self.priority,
            self.eta,
        )

    @classmethod
    def from_wire(cls, data: tuple[Any, ...]) -> Publication:
        headers, properties, body, ctype, cenc, name, exchange, key, etype, priority, eta = data
        return cls(
            Message(headers, properties, body, ctype, cenc),
            Route(name, exchange, key, etype),
            priority,
            eta,
        )
