"""Exchanges, queues and routes, with Celery/kombu's names so that Celery configs read as they are.

>>> from celeriac import Broadcast, Exchange, Queue
>>> media = Exchange("media", type="topic")
>>> task_queues = [
...     Queue("images", media, routing_key="media.image.#"),
...     Queue("video", media, routing_key="media.video.#"),
...     Broadcast("reload"),        # every worker consuming it runs each message once
... ]
>>> task_routes = {"proj.resize": {"exchange": "media", "routing_key": "media.image.png"}}

A route resolves to a :class:`~celeriac.protocol.publication.Route`: straight to a queue (its
``exchange`` None), or an exchange and the routing key to publish with. RabbitMQ routes on the
server; Redis resolves direct and topic exchanges from kombu's binding table and broadcasts with
PUBLISH; SQLite and memory resolve bindings from the app's ``task_queues`` when the message is
published (broadcast needs pub/sub: not there).
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from celeriac.exceptions import ConfigurationError
from celeriac.protocol.publication import Route

EXCHANGE_TYPES = ("direct", "topic", "fanout")


@dataclass(frozen=True, slots=True)
class Exchange:
    """An AMQP exchange: ``direct`` (routing key equals the binding key), ``topic`` (``*`` one
    word, ``#`` zero or more) or ``fanout`` (every bound queue)."""

    name: str = ""
    type: str = "direct"
    durable: bool = True
    auto_delete: bool = False

    def __post_init__(self) -> None:
        if self.type not in EXCHANGE_TYPES:
            raise ConfigurationError(
                f"exchange {self.name!r}: type must be one of {', '.join(EXCHANGE_TYPES)}, "
                f"not {self.type!r}"
            )


@dataclass(frozen=True)
class Queue:
    """A queue bound to ``exchange`` (default: a direct exchange of the queue's name) with
    ``routing_key`` (default: the queue's name), as kombu's ``Queue``."""

    name: str
    exchange: Exchange | str | None = None
    routing_key: str | None = None
    queue_arguments: Mapping[str, Any] | None = None
    durable: bool = True
    exclusive: bool = False
    auto_delete: bool = False
    max_priority: int | None = None

    def __post_init__(self) -> None:
        if not self.name:
            raise ConfigurationError("a queue needs a name")
        exchange = self.exchange
        if exchange is None or exchange == "":
            exchange = Exchange(self.name)
        elif isinstance(exchange, str):
            exchange = Exchange(exchange)
        object.__setattr__(self, "exchange", exchange)
        if self.routing_key is None:
            key = "" if exchange.type == "fanout" else self.name
            object.__setattr__(self, "routing_key", key)

    @property
    def bound_to(self) -> Exchange:
        assert isinstance(self.exchange, Exchange)
        return self.exchange

    @property
    def key(self) -> str:
        return self.routing_key or ""

    @property
    def broadcast(self) -> bool:
        return False

    def arguments(self) -> dict[str, Any]:
        """``x-*`` queue arguments: ``queue_arguments``, plus ``x-max-priority`` when set."""
        args = dict(self.queue_arguments or {})
        if self.max_priority is not None:
            args.setdefault("x-max-priority", int(self.max_priority))
        return args


class Broadcast(Queue):
    """A fanout queue: each worker consuming ``name`` gets its own copy of every message.

    As in Celery, the exchange ``name`` (fanout) is what producers publish to; each worker
    consumes through a queue of its own bound to it (RabbitMQ deletes it a minute after the
    worker went), or a PUB/SUB subscription on Redis.
    """

    def __init__(
        self,
        name: str,
        *,
        exchange: Exchange | str | None = None,
        queue_arguments: Mapping[str, Any] | None = None,
    ) -> None:
        if exchange is None or isinstance(exchange, str):
            exchange = Exchange(exchange or name, type="fanout")
        if exchange.type != "fanout":
            raise ConfigurationError(f"broadcast {name!r}: its exchange must be a fanout one")
        super().__init__(
            name, exchange, routing_key="", queue_arguments=queue_arguments, auto_delete=True
        )

    @property
    def broadcast(self) -> bool:
        return True


def topic_matches(pattern: str, key: str) -> bool:
    """AMQP topic matching: ``*`` is exactly one word, ``#`` zero or more."""
    words, keys = pattern.split("."), key.split(".")

    def match(i: int, j: int) -> bool:
        if i == len(words):
            return j == len(keys)
        if words[i] == "#":
            return any(match(i + 1, k) for k in range(j, len(keys) + 1))
        if j == len(keys):
            return False
        return words[i] in ("*", keys[j]) and match(i + 1, j + 1)

    return match(0, 0)


def kombu_topic_pattern(binding_key: str) -> str:
    """The regex kombu stores for a topic binding in Redis (its ``key_to_pattern``)."""
    wildcards = {"*": r"[^\.]+", "#": r".*?"}
    escaped = "".join(c if c.isalnum() or c in ".#*" else "\\" + c for c in binding_key)
    words = r"\.".join(wildcards.get(w, w) for w in escaped.split("."))
    return f"^{words}$"


def coerce_queue(obj: Any) -> Queue:
    """A :class:`Queue` from ours, a kombu ``Queue``/``Broadcast`` (read by attribute)."""
    if isinstance(obj, Queue):
        return obj
    ex = getattr(obj, "exchange", None)
    exchange = None
    if ex is not None and getattr(ex, "name", None) is not None:
        exchange = Exchange(
            str(ex.name),
            type=str(getattr(ex, "type", None) or "direct"),
            durable=bool(getattr(ex, "durable", True)),
            auto_delete=bool(getattr(ex, "auto_delete", False)),
        )
    alias = getattr(obj, "alias", None)
    if type(obj).__name__ == "Broadcast":
        # kombu names the queue bcast.<uuid> and routes by its alias, the exchange's name
        return Broadcast(str(alias or getattr(exchange, "name", "") or obj.name), exchange=exchange)
    if getattr(obj, "name", None) is None:
        raise ConfigurationError(f"task_queues entry {obj!r} is not a queue")
    return Queue(
        str(obj.name),
        exchange if exchange is not None and exchange.name else None,
        routing_key=getattr(obj, "routing_key", None) or None,
        queue_arguments=getattr(obj, "queue_arguments", None),
        durable=bool(getattr(obj, "durable", True)),
        exclusive=bool(getattr(obj, "exclusive", False)),
        auto_delete=bool(getattr(obj, "auto_delete", False)),
        max_priority=getattr(obj, "max_priority", None),
    )


def _queue_from_options(name: str, options: Mapping[str, Any]) -> Queue:
    """Celery's dict form: ``{"images": {"exchange": "media", "exchange_type": "topic", ...}}``."""
    exchange = options.get("exchange")
    if isinstance(exchange, str) or exchange is None:
        etype = str(options.get("exchange_type") or "direct")
        exchange = Exchange(exchange or name, type=etype)
    if exchange.type == "fanout":
        return Broadcast(name, exchange=exchange)
    return Queue(
        name,
        exchange,
        routing_key=options.get("routing_key", options.get("binding_key")),
        queue_arguments=options.get("queue_arguments"),
        max_priority=options.get("max_priority"),
    )


@dataclass(frozen=True)
class Topology:
    """The queues and exchanges an app declares (``task_queues``) and how names resolve."""

    queues: Mapping[str, Queue] = field(default_factory=dict)
    default_queue: str = "celery"
    create_missing: bool = True
    #: The worker's node name: a broadcast queue is shared by the processes of one node.
    node: str | None = None
    #: ``task_queue_max_priority``: x-max-priority for queues that do not set their own
    max_priority: int | None = None
    _own: str = field(default_factory=lambda: uuid.uuid4().hex[:12])

    @classmethod
    def from_settings(cls, conf: Any) -> Topology:
        raw = conf.task_queues
        items: list[Queue] = []
        if isinstance(raw, Mapping):
            items = [
                _queue_from_options(str(k), v) if isinstance(v, Mapping) else coerce_queue(v)
                for k, v in raw.items()
            ]
        elif raw:
            items = [coerce_queue(q) for q in raw]
        queues: dict[str, Queue] = {}
        for q in items:
            if q.name in queues and queues[q.name] != q:
                raise ConfigurationError(f"task_queues declares {q.name!r} twice, differently")
            queues[q.name] = q
        return cls(
            queues,
            default_queue=conf.task_default_queue,
            create_missing=bool(conf.task_create_missing_queues),
            node=conf.worker_hostname,
            max_priority=conf.task_queue_max_priority,
        )

    def queue(self, name: str) -> Queue | None:
        return self.queues.get(name)

    def exchange(self, name: str) -> Exchange | None:
        for q in self.queues.values():
            if q.bound_to.name == name:
                return q.bound_to
        return None

    def is_broadcast(self, name: str) -> bool:
        q = self.queues.get(name)
        return q is not None and q.broadcast

    def fanout_bound(self, name: str) -> bool:
        """Bound to a fanout exchange: a Broadcast, or a plain queue RabbitMQ alone can keep
        (kombu consumes both through PUB/SUB on Redis)."""
        q = self.queues.get(name)
        return q is not None and q.bound_to.type == "fanout"

    def physical(self, name: str) -> str:
        """The queue a consumer of ``name`` reads: a broadcast's one of this node."""
        q = self.queues.get(name)
        if q is None or not q.broadcast:
            return name
        return f"{name}.bcast.{self.node or self._own}"

    def check_queue(self, name: str) -> None:
        if name not in self.queues and not self.create_missing and self.queues:
            import difflib  # only for this message

            close = difflib.get_close_matches(name, list(self.queues), n=1)
            hint = f"did you mean {close[0]!r}?" if close else f"declared: {sorted(self.queues)}"
            raise ConfigurationError(
                f"queue {name!r} is not in task_queues and task_create_missing_queues is off; "
                + hint
            )

    def destination(
        self,
        queue: str | None,
        exchange: Any = None,
        routing_key: str | None = None,
        exchange_type: str | None = None,
    ) -> Route:
        """Where to publish, following Celery's rules (``celery.app.amqp.send_task_message``).

        A direct exchange without both an exchange and a routing key means the queue itself
        (published through the default exchange); otherwise the exchange and routing key.
        """
        q = self.queues.get(queue) if queue else None
        if queue and q is None:
            self.check_queue(queue)
        if exchange is not None and not isinstance(exchange, str):
            exchange_type = exchange_type or getattr(exchange, "type", None)
            exchange = str(getattr(exchange, "name", "") or "")
        ex_name = exchange or None
        if exchange_type is None:
            if q is not None and (ex_name is None or ex_name == q.bound_to.name):
                exchange_type = q.bound_to.type
            else:
                known = self.exchange(ex_name) if ex_name else None
                exchange_type = known.type if known is not None else "direct"
        if exchange_type not in EXCHANGE_TYPES:
            raise ConfigurationError(f"unknown exchange_type {exchange_type!r}")
        if exchange_type == "direct" and (not ex_name or not routing_key):
            if not queue:
                raise ConfigurationError(
                    f"a route to exchange {ex_name!r} needs a routing_key or a queue"
                )
            return Route(queue)
        if ex_name is None:
            assert q is not None  # a non-direct type came from the queue
            ex_name = q.bound_to.name
        if routing_key is None and q is not None and q.bound_to.name == ex_name:
            routing_key = q.key
        return Route(queue or ex_name, ex_name, routing_key or "", exchange_type)

    def bound(self, dest: Route) -> list[str]:
        """The declared queues a publish on ``dest`` reaches (brokers that route locally)."""
        if dest.exchange is None:
            return [dest.name]
        if dest.exchange_type == "fanout":
            raise ConfigurationError(
                f"exchange {dest.exchange!r} is a fanout (broadcast): that needs a broker "
                "with pub/sub, redis:// or amqp://"
            )
        if self.exchange(dest.exchange) is None:
            raise ConfigurationError(
                f"exchange {dest.exchange!r} is not declared by any queue in task_queues"
            )
        out = []
        for q in self.queues.values():
            if q.bound_to.name != dest.exchange or q.broadcast:
                continue
            if dest.exchange_type == "topic":
                hit = topic_matches(q.key, dest.routing_key)
            else:
                hit = q.key == dest.routing_key
            if hit:
                out.append(q.name)
        return out


def no_queue_bound(dest: Route) -> str:
    return (
        f"no queue is bound to exchange {dest.exchange!r} ({dest.exchange_type}) "
        f"for routing key {dest.routing_key!r}"
    )


__all__ = [
    "Broadcast",
    "Exchange",
    "Queue",
    "Topology",
    "kombu_topic_pattern",
    "topic_matches",
]
