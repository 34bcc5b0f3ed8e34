"""RabbitMQ declarations for ``task_queues``: exchanges, queues and bindings as Celery makes them.

A queue of ``task_queues`` is declared with its own exchange (direct, topic or fanout), flags
and ``x-*`` arguments, and bound with its routing key, exactly as kombu would, so that Celery
peers with the same ``task_queues`` declare the same objects. A queue that is not in
``task_queues`` keeps Celery's default layout (a direct exchange and a binding of its name).

A :class:`~celeriac.routing.Broadcast` queue ``b`` is the fanout exchange ``b``; each worker
node consumes through a queue of its own bound to it (``b.bcast.<node>``), which RabbitMQ
deletes a minute after its last consumer went. The processes of one node share that queue, so
a broadcast runs once per node.
"""

from __future__ import annotations

import logging
from typing import Any

import amqp

from celeriac.protocol.publication import Route
from celeriac.routing import Queue, Topology

logger = logging.getLogger("celeriac.broker.amqp")

#: A node's broadcast queue outlives its last consumer by this long (ms).
BROADCAST_EXPIRES_MS = 60_000


def queue_arguments(q: Queue | None, max_priority: Any, queue_type: str) -> dict[str, Any]:
    """What to declare a queue with: its own arguments, then the broker-wide options."""
    args = q.arguments() if q is not None else {}
    if max_priority and "x-max-priority" not in args:
        args["x-max-priority"] = int(max_priority)
    if queue_type == "quorum":
        args.setdefault("x-queue-type", "quorum")
    if args.get("x-queue-type") == "quorum" and "x-max-priority" in args:
        # RabbitMQ 3.x refuses the argument on quorum queues (they have no priorities)
        logger.warning("quorum queue %r: x-max-priority is not applied", q.name if q else "")
        del args["x-max-priority"]
    return args


def declare_exchange(
    ch: amqp.Channel, name: str, kind: str, *, durable: bool = True, auto_delete: bool = False
) -> None:
    # (py-amqp's own defaults are durable=False, auto_delete=True: never what a peer declares)
    ch.exchange_declare(name, kind, durable=durable, auto_delete=auto_delete)


def declare_plain_queue(
    ch: amqp.Channel,
    name: str,
    arguments: dict[str, Any] | None = None,
    *,
    durable: bool = True,
    exclusive: bool = False,
    auto_delete: bool = False,
) -> None:
    ch.queue_declare(
        name,
        durable=durable,
        exclusive=exclusive,
        auto_delete=auto_delete,
        arguments=arguments or {},
    )


def declare_queue(
    ch: amqp.Channel, topology: Topology, name: str, arguments: dict[str, Any]
) -> None:
    """Declare ``name`` as ``task_queues`` says, or in Celery's default layout."""
    q = topology.queue(name)
    if q is None:
        declare_exchange(ch, name, "direct")
        declare_plain_queue(ch, name, arguments)
        ch.queue_bind(name, name, routing_key=name)
        return
    ex = q.bound_to
    declare_exchange(ch, ex.name, ex.type, durable=ex.durable, auto_delete=ex.auto_delete)
    if q.broadcast:  # this node's own queue: nothing any peer has to agree with
        own = topology.physical(name)
        # Expiry rather than auto-delete: a consumer re-subscribing (or a restarted child of
        # the node) must not delete the queue and the broadcasts waiting in it.
        # (classic, whatever queue_type says: a quorum queue cannot be this short-lived one)
        arguments = {k: v for k, v in arguments.items() if k != "x-queue-type"}
        arguments["x-expires"] = BROADCAST_EXPIRES_MS
        declare_plain_queue(ch, own, arguments, durable=False)
        ch.queue_bind(own, ex.name, routing_key="")
        return
    declare_plain_queue(
        ch, name, arguments, durable=q.durable, exclusive=q.exclusive, auto_delete=q.auto_delete
    )
    ch.queue_bind(name, ex.name, routing_key=q.key)


def queues_behind(topology: Topology, dest: Route) -> list[str]:
    """The declared (non-broadcast) queues bound to ``dest``'s exchange, to declare first."""
    return [
        q.name
        for q in topology.queues.values()
        if q.bound_to.name == dest.exchange and not q.broadcast
    ]
