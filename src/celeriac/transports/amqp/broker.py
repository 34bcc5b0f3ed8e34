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

Delivery rules on top of AMQP:

* every publish waits for the broker's confirm (``mandatory`` too, so an unroutable message is
  an error, not a silent drop); a publish interrupted by a lost connection is sent again on the
  reopened one until ``publish_timeout`` runs out, then raises :class:`BrokerError`;
* the lease is the channel: unacknowledged deliveries go back to the queue when the channel or
  connection dies, so :meth:`extend` has nothing to do (RabbitMQ's ``consumer_timeout``, 30 min
  by default, still closes a channel whose delivery stays unacknowledged longer: tasks that run
  longer need it raised on the server). Acks are sent on the delivering channel, batched with
  ``multiple=True`` over the lowest outstanding tags; handles from a dead channel are dropped;
* delayed messages (ETA, countdown, delayed requeues) wait in RabbitMQ, never in a worker: a
  cascade of TTL queues, one per power-of-two second (``celeriac.delay.<N>.<q>``, TTL 2^N s)
  linked by dead-letter exchanges ``celeriac.delay.<N>`` that route on the bits of the delay
  written in the routing key, as Celery 5.5's native delayed delivery does (PROTOCOL.md §3.3).
  The queues are per destination so that :meth:`depth` and :meth:`purge` see delayed messages;
  each queue is also bound to Celery's ``celery_delayed_delivery`` exchange, so delayed messages
  from Celery producers reach it. Delays are whole seconds, rounded up (never early);
* delivery counts: 1 + ``x-delivery-count`` on quorum queues, 1 + ``redelivered`` on classic
  ones, plus the ``x-celeriac-deliveries`` header a requeue that republishes carries forward;
* dead letters go to the exchange ``celeriac.dead`` (fanout) and its queue with the reason,
  source queue, time and an id in ``x-celeriac-*`` headers.

Transport options (``broker_transport_options``): :class:`.options.AMQPOptions`.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import math
import threading
import time
from collections import Counter, deque
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import aiormq.exceptions
from aiormq.abc import AbstractChannel, DeliveredMessage
from pamqp import commands as spec

from celeriac.brokers.base import Broker, DeadLetter, Delivery
from celeriac.exceptions import BrokerError, ConfigurationError
from celeriac.protocol.message import Message
from celeriac.protocol.publication import Publication, Route
from celeriac.transports.amqp.connection import Link, to_pamqp
from celeriac.transports.amqp.options import AMQPOptions
from celeriac.transports.amqp.publisher import Outgoing, Publisher, Unroutable
from celeriac.transports.amqp.topology import declare_queue, queue_arguments, queues_behind

if TYPE_CHECKING:
    from celeriac.backends.base import EncodedResult
    from celeriac.transports.amqp.rpc_backend import RPCBackend

logger = logging.getLogger("celeriac.broker.amqp")

HDR_COUNT = "x-celeriac-deliveries"
HDR_REASON, HDR_QUEUE = "x-celeriac-reason", "x-celeriac-queue"
HDR_FAILED, HDR_DEAD_ID = "x-celeriac-failed-at", "x-celeriac-dead-id"
_DEAD_HEADERS = (HDR_REASON, HDR_QUEUE, HDR_FAILED, HDR_DEAD_ID)
#: Headers RabbitMQ adds on its own (dead-lettering, quorum redelivery): transport, not task.
_BROKER_HEADER_PREFIXES = ("x-death", "x-first-death-", "x-last-death-", "x-delivery-count")

DELAY_BITS = 28
MAX_DELAY = 2**DELAY_BITS - 1
DEAD_EXCHANGE = "celeriac.dead"
CELERY_DELAYED_EXCHANGE = "celery_delayed_delivery"
_ADMIN_TIMEOUT = 30.0
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


@dataclass(frozen=True, slots=True)
class Tag:
    """A delivery's handle: the channel epoch, its delivery tag, RabbitMQ's redelivered flag."""

    epoch: int
    delivery_tag: int
    redelivered: bool


def _int(value: Any) -> int:
    try:
        return int(value)
    except (TypeError, ValueError):
        return 0


def to_message(msg: DeliveredMessage) -> tuple[Message, int, int | None]:
    """The :class:`Message` in an AMQP delivery, our carried count, and ``x-delivery-count``."""
    props = msg.header.properties
    raw = dict(props.headers or {})
    carried = _int(raw.pop(HDR_COUNT, 0))
    quorum_count = _int(raw["x-delivery-count"]) if "x-delivery-count" in raw else None
    headers = {k: v for k, v in raw.items() if not k.startswith(_BROKER_HEADER_PREFIXES)}
    properties: dict[str, Any] = {}
    if props.correlation_id is not None:
        properties["correlation_id"] = props.correlation_id
    properties["reply_to"] = props.reply_to or ""  # an empty shortstr is not sent at all
    if props.delivery_mode is not None:
        properties["delivery_mode"] = props.delivery_mode
    properties["priority"] = props.priority or 0
    if props.expiration is not None:
        properties["expiration"] = props.expiration
    message = Message(
        headers, properties, msg.body, props.content_type or "", props.content_encoding or "utf-8"
    )
    return message, carried, quorum_count


def properties(
    message: Message, *, priority: int, headers: dict[str, Any], keep_expiration: bool = True
) -> dict[str, Any]:
    """AMQP properties for ``message`` (PROTOCOL.md §3.1), by py-amqp's names."""
    p = message.properties
    return {
        "content_type": message.content_type,
        "content_encoding": message.content_encoding,
        "application_headers": headers,
        "delivery_mode": int(p.get("delivery_mode") or 2),
        "priority": max(0, min(255, int(priority))),
        "correlation_id": p.get("correlation_id") or message.task_id,
        "reply_to": p.get("reply_to") or None,
        "expiration": p.get("expiration") if keep_expiration else None,
    }


class AMQPBroker(Broker):
    """Leased delivery over RabbitMQ in Celery's layout (see the module docstring)."""

    options_class = AMQPOptions
    options: AMQPOptions
    leases_follow_connection = True

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
        self.dead_letter_queue = opts.dead_letter_queue
        self.link = link
        self._closed = False
        #: names this process declared (server objects are durable: once per process)
        self._declared: set[str] = set()
        self._delay_declared: set[str] = set()
        self._declare_lock: asyncio.Lock | None = None
        #: (exchange, routing key) published to and confirmed: declared, no need to ask again
        self._routed: set[tuple[str, str]] = set()
        self._settle_lock: asyncio.Lock | None = None  # on the I/O loop
        #: per thread: while publish_many runs, the sends it collects
        self._local = threading.local()
        # consumer state, guarded by _cond; written on the I/O thread, read by fetch callers
        self._cond = threading.Condition()
        self._buffer: deque[Delivery] = deque()
        self._epoch = 0
        self._consumers: dict[str, tuple[str, int]] = {}  # queue -> (consumer tag, prefetch)
        self._held: dict[int, tuple[str, str]] = {}  # delivery tag -> (queue, consumer tag)
        self._held_by: Counter[str] = Counter()
        self._last_dead_id = 0
        self._arrivals = 0

    # -- declarations ----------------------------------------------------------------------------
    def queue_arguments(self, queue: str | None = None) -> dict[str, Any]:
        q = self.topology.queue(queue) if queue is not None else None
        max_priority = self.max_priority or self.topology.max_priority
        return queue_arguments(q, max_priority, self.queue_type)

    def _level_arguments(self, level: int, queue: str) -> dict[str, Any]:
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

    async def _declare(self, queue: str, timeout: float, *, delays: bool = False) -> None:
        """Declare ``queue`` as Celery does (and its delay cascade when ``delays``)."""
        if queue in self._declared and (not delays or queue in self._delay_declared):
            return
        if self._declare_lock is None:
            self._declare_lock = asyncio.Lock()
        async with self._declare_lock:
            ch = (await self.link.channel("admin", timeout)).channel
            try:
                if queue not in self._declared:
                    args = self.queue_arguments(queue)
                    await declare_queue(ch, self.topology, queue, args)
                    self._declared.add(queue)
                if delays and queue not in self._delay_declared:
                    await self._declare_delays(ch, self.topology.physical(queue))
                    self._delay_declared.add(queue)
            except aiormq.exceptions.ChannelPreconditionFailed as exc:
                raise BrokerError(
                    f"queue {queue!r} exists with other arguments than "
                    f"{self.queue_arguments(queue)} (RabbitMQ: {exc}); every peer must declare "
                    "it alike (task_queues, max_priority, queue_type)"
                ) from exc

    async def _declare_route(self, dest: Route, timeout: float) -> None:
        """Declare ``dest``'s exchange and the ``task_queues`` bound to it, before publishing."""
        assert dest.exchange is not None
        marker = "exchange:" + dest.exchange
        if marker in self._declared:
            return
        for queue in queues_behind(self.topology, dest):
            await self._declare(queue, timeout)
        ch = (await self.link.channel("admin", timeout)).channel
        known = self.topology.exchange(dest.exchange)
        try:
            await ch.exchange_declare(
                dest.exchange,
                exchange_type=dest.exchange_type,
                durable=known.durable if known is not None else True,
                auto_delete=known.auto_delete if known is not None else False,
            )
        except aiormq.exceptions.ChannelPreconditionFailed as exc:
            raise BrokerError(
                f"exchange {dest.exchange!r} exists with another type than "
                f"{dest.exchange_type!r} (RabbitMQ: {exc}); declare it alike in task_queues"
            ) from exc
        self._declared.add(marker)

    async def _declare_delays(self, ch: AbstractChannel, queue: str) -> None:
        if "" not in self._delay_declared:  # the exchanges every queue's cascade shares
            for level in range(DELAY_BITS):
                await ch.exchange_declare(
                    delay_exchange(level), exchange_type="topic", durable=True
                )
            for level in range(DELAY_BITS - 1, 0, -1):
                await ch.exchange_bind(
                    delay_exchange(level - 1), delay_exchange(level), _bit_pattern(level, "0", "#")
                )
            await ch.exchange_declare(CELERY_DELAYED_EXCHANGE, exchange_type="topic", durable=True)
            self._delay_declared.add("")
        for level in range(DELAY_BITS):
            name = delay_queue(level, queue)
            await ch.queue_declare(
                name, durable=True, arguments=self._level_arguments(level, queue)
            )
            tail = "*." * level + queue  # the lower bits, then the destination
            await ch.queue_bind(name, delay_exchange(level), _bit_pattern(level, "1", tail))
        await ch.queue_bind(queue, delay_exchange(0), _bit_pattern(0, "0", queue))
        await ch.queue_bind(queue, CELERY_DELAYED_EXCHANGE, f"#.{queue}")

    async def _declare_dead(self, timeout: float) -> None:
        if DEAD_EXCHANGE + "/" + self.dead_letter_queue in self._declared:
            return
        ch = (await self.link.channel("admin", timeout)).channel
        await ch.exchange_declare(DEAD_EXCHANGE, exchange_type="fanout", durable=True)
        await ch.queue_declare(self.dead_letter_queue, durable=True)
        await ch.queue_bind(self.dead_letter_queue, DEAD_EXCHANGE, routing_key="")
        self._declared.add(DEAD_EXCHANGE + "/" + self.dead_letter_queue)

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
        self._send(message, route, priority, eta, dict(message.headers))

    def _send(
        self,
        message: Message,
        route: Route,
        priority: int,
        eta: float | None,
        headers: dict[str, Any],
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

        async def declare(remaining: float) -> None:
            if route.exchange is not None:
                await self._declare_route(route, remaining)
            else:
                await self._declare(route.name, remaining, delays=delay > 0)

        send = _Send(Outgoing(message.body, exchange, key, props), declare)
        batch: list[_Send] | None = getattr(self._local, "batch", None)
        if batch is not None:
            batch.append(send)  # publish_many sends it with the rest
        else:
            self._send_all([send])

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
            self._send_all(batch)

    def _send_all(self, sends: list[_Send]) -> None:
        """Publish on a connection of this thread's own (py-amqp), or on an event loop and
        when every such connection is lent, through the I/O thread (aiormq)."""
        publishers = self.link.publishers
        publisher = publishers.borrow()
        if publisher is None:
            self.link.run(lambda: _all(sends, self._publish), self.publish_timeout + 5)
            return
        try:
            self._publish_sync(publisher, sends)
        finally:
            publishers.give_back(publisher)

    def _publish_sync(self, publisher: Publisher, sends: list[_Send]) -> None:
        """:meth:`_publish` for a sync caller, a batch at once, on a connection of its own."""
        deadline = time.monotonic() + self.publish_timeout
        for attempt in (1, 2):
            declares = {s.item.route: s.declare for s in sends if s.item.route not in self._routed}
            if declares:
                self._declare_all(list(declares.values()), deadline)
            try:
                returned = publisher.send([s.item for s in sends], deadline)
            except Unroutable as exc:  # an exchange deleted under us
                returned = exc.items
                if attempt == 2:
                    raise
            bounced = {id(item) for item in returned}
            for s in sends:
                if id(s.item) not in bounced:
                    self._remember_route(s.item.route)
            if not returned:
                return
            if attempt == 2:
                raise BrokerError(
                    f"RabbitMQ could not route a message to {returned[0].routing_key!r}, "
                    "declared again"
                )
            # A queue deleted under us: declare again, and send what came back once more.
            self._forget_declarations()
            sends = [s for s in sends if id(s.item) in bounced]

    def _declare_all(
        self, declares: list[Callable[[float], Awaitable[None]]], deadline: float
    ) -> None:
        """Run the declares on the I/O link, again after a lost connection until ``deadline``
        (as :meth:`_publish` does); BrokerError when they cannot be made."""

        async def run(remaining: float) -> None:
            for declare in declares:
                await declare(remaining)

        pause = 0.05
        while True:
            remaining = max(0.01, deadline - time.monotonic())
            try:
                self.link.run(functools.partial(run, remaining), remaining + 5)
                return
            except BrokerError:  # refused (other arguments), closed, or out of time
                raise
            except Exception as exc:  # lost channel or connection (aiormq: sometimes bare)
                if time.monotonic() + pause >= deadline:
                    raise BrokerError(f"declaring for a publish failed: {exc!r}") from exc
                time.sleep(pause)
                pause = min(pause * 2, 1.0)

    def _remember_route(self, route: tuple[str, str]) -> None:
        if len(self._routed) >= _ROUTED_LIMIT:  # distinct delays make distinct keys
            self._routed.clear()
        self._routed.add(route)

    def _forget_declarations(self) -> None:
        """A queue was deleted under us: declare everything again before the next publish."""
        self._routed.clear()
        self._declared.clear()
        self._delay_declared.clear()

    async def _publish(self, send: _Send) -> None:
        """Publish on the I/O link and wait for the confirm; again on a new channel after a loss.

        Declares first, unless a publish to the same exchange and key was confirmed: a queue
        deleted since then makes the mandatory publish come back and clears the memo.
        """
        item, link = send.item, self.link
        exchange, routing_key = item.route
        props = to_pamqp(item.properties)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.publish_timeout
        pause, returned = 0.05, False
        while True:
            remaining = max(0.01, deadline - loop.time())
            try:
                if item.route not in self._routed:
                    await send.declare(remaining)
                chan = await link.channel("publish", remaining, confirms=True)
                await chan.channel.basic_publish(
                    item.body,
                    exchange=exchange,
                    routing_key=routing_key,
                    properties=props,
                    mandatory=True,
                    timeout=remaining,
                )
                self._remember_route(item.route)
                return
            except aiormq.exceptions.PublishError as exc:
                # Unroutable: the queue was deleted under us. Declare it again, once.
                if returned:
                    raise BrokerError(
                        f"RabbitMQ could not route a message to {routing_key!r}: {exc}"
                    ) from exc
                returned = True
                self._forget_declarations()
            except aiormq.exceptions.DeliveryError as exc:
                raise BrokerError(f"RabbitMQ refused a message for {routing_key!r}: {exc}") from exc
            except BrokerError:
                raise
            except (TypeError, ValueError) as exc:  # e.g. a header value AMQP cannot carry
                raise BrokerError(f"cannot publish to {routing_key!r}: {exc}") from exc
            except Exception as exc:  # lost channel or connection (aiormq: sometimes bare)
                if loop.time() + pause >= deadline:
                    raise BrokerError(
                        f"publish to {routing_key!r} not confirmed within "
                        f"{self.publish_timeout:.0f}s: {exc!r}"
                    ) from exc
                await asyncio.sleep(pause)
                pause = min(pause * 2, 1.0)

    # -- consuming -------------------------------------------------------------------------------
    def fetch(self, queues: Sequence[str], limit: int, *, timeout: float) -> list[Delivery]:
        if not queues or limit <= 0:
            return []
        deadline = time.monotonic() + timeout
        wanted = set(queues)
        with self._cond:
            got = self._take(wanted, limit)
        if got:
            return got
        # A caller that will not wait must still get what RabbitMQ already sent our way.
        sync = timeout < 0.1
        while sync or not self._subscribed(queues, limit):
            try:
                self._admin(lambda: self._consume(list(queues), limit, sync), "subscribing")
                break
            except BrokerError:
                if time.monotonic() + 0.1 >= deadline:
                    raise
                time.sleep(0.1)  # the connection is being reopened
        with self._cond:
            while True:
                got = self._take(wanted, limit)
                left = deadline - time.monotonic()
                if got or left <= 0:
                    return got
                self._cond.wait(left)

    def _subscribed(self, queues: Sequence[str], limit: int) -> bool:
        """Already consuming every queue, on the open channel, with room for ``limit`` more?

        Then a fetch only waits for deliveries: asking the I/O thread to check the
        subscriptions cost a thread round trip per fetch.
        """
        chan = self.link.existing("consume")
        if chan is None:
            return False
        with self._cond:
            if chan.epoch != self._epoch:
                return False
            for q in queues:
                current = self._consumers.get(q)
                if current is None or current[1] - self._held_by[current[0]] < limit:
                    return False
        return True

    def _take(self, queues: set[str], limit: int) -> list[Delivery]:
        out: list[Delivery] = []
        if not self._buffer:
            return out
        keep: deque[Delivery] = deque()
        while self._buffer:
            d = self._buffer.popleft()
            if d.tag.epoch != self._epoch:
                continue  # its channel died: RabbitMQ delivers it again
            if len(out) < limit and d.queue in queues:
                out.append(d)
            else:
                keep.append(d)
        self._buffer = keep
        return out

    async def _consume(self, queues: list[str], limit: int, sync: bool = False) -> None:
        """Consume ``queues`` with room for ``limit`` more deliveries each (QoS prefetch)."""
        chan = await self.link.channel("consume", _ADMIN_TIMEOUT)
        with self._cond:
            if chan.epoch != self._epoch:  # new channel: nothing held on the old one counts
                self._epoch = chan.epoch
                self._consumers.clear()
                self._held.clear()
                self._held_by.clear()
                self._buffer.clear()
            plan: list[tuple[str, str | None]] = []
            for q in queues:
                current = self._consumers.get(q)
                if current is None:
                    plan.append((q, None))
                elif current[1] - self._held_by[current[0]] < limit:
                    # The caller holds more than this consumer's prefetch allows (it fetches
                    # without acking): subscribe afresh with room for what it asks now.
                    plan.append((q, current[0]))
        for q, old in plan:
            await self._declare(q, _ADMIN_TIMEOUT)
            if old is not None:
                await chan.channel.basic_cancel(old)
            await chan.channel.basic_qos(prefetch_count=limit)
            epoch = chan.epoch

            async def on_message(msg: DeliveredMessage, q: str = q, epoch: int = epoch) -> None:
                self._on_message(msg, q, epoch)

            ok = await chan.channel.basic_consume(
                self.topology.physical(q), on_message, no_ack=False
            )
            with self._cond:
                self._consumers[q] = (str(ok.consumer_tag), limit)
        if sync:
            # Twice: RabbitMQ may answer the first round trip before it forwards a delivery
            # its queue had already sent to our channel.
            await self._sync_consumer(queues[0])
            await self._sync_consumer(queues[0])

    def _on_message(self, msg: DeliveredMessage, queue: str, epoch: int) -> None:
        deliver = msg.delivery
        assert isinstance(deliver, spec.Basic.Deliver)
        message, carried, quorum_count = to_message(msg)
        redelivered = bool(deliver.redelivered)
        extra = quorum_count if quorum_count is not None else int(redelivered)
        tag = Tag(epoch, int(deliver.delivery_tag or 0), redelivered)
        delivery = Delivery(message, queue, tag, 1 + carried + extra)
        with self._cond:
            if epoch != self._epoch:
                return
            self._held[tag.delivery_tag] = (queue, str(deliver.consumer_tag))
            self._held_by[str(deliver.consumer_tag)] += 1
            self._arrivals += 1
            self._buffer.append(delivery)
            self._cond.notify_all()

    # -- settling --------------------------------------------------------------------------------
    def _release(self, tags: Sequence[Tag]) -> tuple[int, list[int]]:
        """Forget ``tags`` held on the current channel: ``(multiple-ack tag, single tags)``.

        ``multiple=True`` acks every outstanding tag up to the one given, so it covers only the
        run of the *lowest* outstanding tags that are all in this batch; the rest go one by one.
        Tags of an older channel are dropped (RabbitMQ has requeued those messages).
        """
        with self._cond:
            mine = sorted(t.delivery_tag for t in tags if t.epoch == self._epoch)
            mine = [t for t in mine if t in self._held]
            if not mine:
                return 0, []
            held = sorted(self._held)
            prefix = 0
            while prefix < len(mine) and held[prefix] == mine[prefix]:
                prefix += 1
            for t in mine:
                _, ctag = self._held.pop(t)
                self._held_by[ctag] -= 1
        if prefix > 1:
            return mine[prefix - 1], mine[prefix:]
        return 0, mine

    async def _settle(self, tags: Sequence[Tag], how: str = "ack") -> None:
        chan = self.link.existing("consume")
        if chan is None:
            return  # the channel died with the connection: RabbitMQ requeued them
        multiple, singles = self._release([t for t in tags if t.epoch == chan.epoch])
        await self._write_settlement(chan.epoch, multiple, singles, how)

    async def _write_settlement(
        self, epoch: int, multiple: int, singles: list[int], how: str = "ack"
    ) -> None:
        if self._settle_lock is None:
            self._settle_lock = asyncio.Lock()
        # In the order they were handed over: a multiple ack written before the single acks of
        # tags below it would make those unknown to RabbitMQ, which closes the channel.
        async with self._settle_lock:
            await self._write_settlement_now(epoch, multiple, singles, how)

    async def _write_settlement_now(
        self, epoch: int, multiple: int, singles: list[int], how: str
    ) -> None:
        chan = self.link.existing("consume")
        if chan is None or chan.epoch != epoch:
            return  # the channel died with the connection: RabbitMQ requeued them
        try:
            if how == "ack":
                if multiple:
                    await chan.channel.basic_ack(multiple, multiple=True)
                for t in singles:
                    await chan.channel.basic_ack(t)
            else:
                if multiple:
                    await chan.channel.basic_nack(multiple, multiple=True, requeue=True)
                for t in singles:
                    await chan.channel.basic_nack(t, requeue=True)
        except Exception as exc:  # the channel died: RabbitMQ requeued them
            count = len(singles) + (1 if multiple else 0)
            logger.warning("AMQP: %s of %d message(s) dropped: %s", how, count, exc)

    def _current(self, delivery: Delivery) -> bool:
        tag: Tag = delivery.tag
        with self._cond:
            return tag.epoch == self._epoch and tag.delivery_tag in self._held

    def ack(self, deliveries: Sequence[Delivery]) -> None:
        """Forget the deliveries now; the I/O thread writes the ``basic.ack`` after.

        AMQP does not answer an ack, so waiting for the I/O thread to write it bought the
        caller nothing: an ack lost with its connection means a redelivery either way. The
        link writes what it was handed before it closes.
        """
        if not deliveries:
            return
        with self._cond:
            epoch = self._epoch
        multiple, singles = self._release([d.tag for d in deliveries if d.tag.epoch == epoch])
        if multiple or singles:
            self.link.spawn(lambda: self._write_settlement(epoch, multiple, singles))

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
        """Send ``results`` (``rpc://`` replies) and then the acks on the channel the tasks came
        from, without waiting, and fetch.

        RabbitMQ handles one channel's frames in order, so an ack never overtakes its task's
        result: the result has been handed to RabbitMQ before the task is gone, as when the
        worker waits for a publisher confirm, without the wait. Replies are transient messages
        (as in Celery), so a confirm promised no more than that.
        """
        sends = rpc.replies_for(results) if results else []
        with self._cond:
            epoch = self._epoch
        multiple, singles = self._release([d.tag for d in acks if d.tag.epoch == epoch])
        if sends or multiple or singles:
            self.link.spawn(lambda: self._reply_and_settle(rpc, epoch, sends, multiple, singles))
        return self.fetch(queues, limit, timeout=timeout) if limit > 0 else []

    async def _reply_and_settle(
        self,
        rpc: RPCBackend,
        epoch: int,
        sends: list[tuple[str, str, bytes]],
        multiple: int,
        singles: list[int],
    ) -> None:
        if self._settle_lock is None:
            self._settle_lock = asyncio.Lock()
        # The lock from the start, as every settlement takes it: acks are written in the order
        # they were handed over even while this batch's replies are being written.
        async with self._settle_lock:
            chan = self.link.existing("consume")
            if chan is None or chan.epoch != epoch:
                # The tasks' channel died: RabbitMQ delivers them again and they run again.
                return
            try:
                for reply_to, correlation_id, data in sends:
                    await rpc.publish_reply(chan.channel, reply_to, correlation_id, data)
            except Exception as exc:
                # No ack follows: the tasks run again (given back now if the channel lives).
                logger.warning("AMQP: results not sent, their tasks will run again: %r", exc)
                await self._write_settlement_now(epoch, multiple, singles, "nack")
                return
            await self._write_settlement_now(epoch, multiple, singles, "ack")

    def extend(self, deliveries: Sequence[Delivery]) -> None:
        """Nothing to do: a delivery stays leased while its channel lives."""

    def requeue(
        self, delivery: Delivery, *, delay_until: float | None = None, count: bool = True
    ) -> None:
        if not self._current(delivery):
            return  # its channel died: RabbitMQ redelivers it
        tag: Tag = delivery.tag
        later = delay_until is not None and delay_until > time.time()
        if not later and count and (self.queue_type == "quorum" or not tag.redelivered):
            # Back in place; RabbitMQ's redelivered flag / x-delivery-count does the counting.
            self.link.run(lambda: self._settle([tag], "nack"), _ADMIN_TIMEOUT)
            return
        self._republish(delivery, delay_until if later else None, count)

    def _republish(self, delivery: Delivery, eta: float | None, count: bool) -> None:
        message = delivery.message
        headers = dict(message.headers)
        headers[HDR_COUNT] = delivery.delivery_count if count else delivery.delivery_count - 1
        priority = int(message.properties.get("priority") or 0)
        self._send(message, Route(delivery.queue), priority, eta, headers)
        self.ack([delivery])

    def dead_letter(self, delivery: Delivery, reason: str) -> None:
        if not self._current(delivery):
            return  # redelivered elsewhere: not both dead and running
        message = delivery.message
        headers = dict(message.headers)
        headers.update(
            {
                HDR_REASON: reason,
                HDR_QUEUE: delivery.queue,
                HDR_FAILED: time.time(),
                HDR_DEAD_ID: self._dead_id(),
                HDR_COUNT: delivery.delivery_count,
            }
        )
        props = properties(message, priority=0, headers=headers, keep_expiration=False)
        item = Outgoing(message.body, DEAD_EXCHANGE, delivery.queue, props)
        self._send_all([_Send(item, self._declare_dead)])
        self.ack([delivery])

    def _dead_id(self) -> int:
        # Microseconds since the epoch: ordered, unique within a process, an int for the CLI.
        with self._cond:
            self._last_dead_id = max(self._last_dead_id + 1, time.time_ns() // 1000)
            return self._last_dead_id

    # -- administration --------------------------------------------------------------------------
    def _queues_of(self, queue: str) -> list[str]:
        queue = self.topology.physical(queue)
        return [queue] + [delay_queue(level, queue) for level in range(DELAY_BITS)]

    def purge(self, queue: str) -> int:
        async def run() -> int:
            await self._declare(queue, _ADMIN_TIMEOUT, delays=True)
            ch = (await self.link.channel("admin", _ADMIN_TIMEOUT)).channel
            total = 0
            for name in self._queues_of(queue):
                ok = await ch.queue_purge(name)
                total += int(ok.message_count or 0)
            return total

        return int(self._admin(run, f"purging {queue!r}"))

    def depth(self, queue: str) -> int:
        async def run() -> int:
            await self._declare(queue, _ADMIN_TIMEOUT, delays=True)
            ch = (await self.link.channel("admin", _ADMIN_TIMEOUT)).channel
            for _ in range(5):
                # What RabbitMQ counts as ready and what this process holds must be read with
                # no delivery in between, or a message is counted twice or not at all.
                await self._sync_consumer(queue)
                await self._sync_consumer(queue)
                arrivals = self._arrivals
                total = 0
                for name in self._queues_of(queue):
                    ok = await ch.queue_declare(name, passive=True)
                    total += int(ok.message_count or 0)
                await self._sync_consumer(queue)
                if arrivals == self._arrivals:
                    break
            with self._cond:  # leased (or prefetched) here; other consumers' are not visible
                return total + sum(1 for q, _ in self._held.values() if q == queue)

        return int(self._admin(run, f"counting {queue!r}"))

    async def _sync_consumer(self, queue: str) -> None:
        """Wait until RabbitMQ has processed our acks and we have every delivery it sent."""
        chan = self.link.existing("consume")
        if chan is None:
            return
        # a round trip on that channel
        await chan.channel.queue_declare(self.topology.physical(queue), passive=True)
        for _ in range(3):  # deliveries read before the reply still run as tasks
            await asyncio.sleep(0)

    def _admin(self, fn: Callable[[], Awaitable[Any]], what: str) -> Any:
        async def guarded() -> Any:
            try:
                return await fn()
            except BrokerError:
                raise
            except Exception as exc:  # aiormq also raises a bare Exception when a link drops
                raise BrokerError(f"AMQP broker: {what} failed: {exc!r}") from exc

        return self.link.run(guarded, _ADMIN_TIMEOUT + 5)

    def dead_letters(self, limit: int = 100) -> list[DeadLetter]:
        async def run() -> list[DeadLetter]:
            await self._declare_dead(_ADMIN_TIMEOUT)
            ch = await self.link.scratch_channel(_ADMIN_TIMEOUT)
            out: list[DeadLetter] = []
            try:
                while len(out) < limit:
                    msg = await ch.basic_get(self.dead_letter_queue, no_ack=False)
                    if not isinstance(msg.delivery, spec.Basic.GetOk):
                        break
                    out.append(_dead_letter(msg))
            finally:
                await ch.close()  # everything read goes back, in its place
            return out

        return list(self._admin(run, "reading dead letters"))

    def replay_dead_letters(self, ids: Sequence[Any] | None = None) -> int:
        if ids is not None and not ids:
            return 0
        wanted = None if ids is None else {int(i) for i in ids}

        async def run() -> int:
            await self._declare_dead(_ADMIN_TIMEOUT)
            ch = await self.link.scratch_channel(_ADMIN_TIMEOUT)
            replayed = 0
            try:
                ok = await ch.queue_declare(self.dead_letter_queue, passive=True)
                for _ in range(int(ok.message_count or 0)):
                    msg = await ch.basic_get(self.dead_letter_queue, no_ack=False)
                    if not isinstance(msg.delivery, spec.Basic.GetOk):
                        break
                    dead = _dead_letter(msg)
                    if wanted is not None and dead.id not in wanted:
                        continue
                    await self._replay_one(dead)
                    await ch.basic_ack(int(msg.delivery.delivery_tag or 0))
                    replayed += 1
            finally:
                await ch.close()
            return replayed

        return int(self._admin(run, "replaying dead letters"))

    async def _replay_one(self, dead: DeadLetter) -> None:
        message = dead.message
        priority = int(message.properties.get("priority") or 0)
        props = properties(message, priority=priority, headers=dict(message.headers))

        async def declare(remaining: float) -> None:
            await self._declare(dead.queue, remaining)

        item = Outgoing(message.body, "", dead.queue, props)
        await self._publish(_Send(item, declare))

    def purge_dead_letters(self) -> int:
        async def run() -> int:
            await self._declare_dead(_ADMIN_TIMEOUT)
            ch = (await self.link.channel("admin", _ADMIN_TIMEOUT)).channel
            ok = await ch.queue_purge(self.dead_letter_queue)
            return int(ok.message_count or 0)

        return int(self._admin(run, "purging dead letters"))

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            super().close()


@dataclass(frozen=True)
class _Send:
    """A message to publish and how to declare where it goes (on the I/O loop)."""

    item: Outgoing
    declare: Callable[[float], Awaitable[None]]


async def _all(sends: Sequence[_Send], publish: Callable[[_Send], Awaitable[None]]) -> None:
    """Publish side by side, each retrying on its own; the first error once all are done."""
    outcomes = await asyncio.gather(*(publish(send) for send in sends), return_exceptions=True)
    for outcome in outcomes:
        if isinstance(outcome, BaseException):
            raise outcome


def _dead_letter(msg: DeliveredMessage) -> DeadLetter:
    message, _, _ = to_message(msg)
    headers = message.headers
    info = {k: headers.pop(k, None) for k in _DEAD_HEADERS}
    return DeadLetter(
        id=_int(info[HDR_DEAD_ID]),
        queue=str(info[HDR_QUEUE] or msg.routing_key or ""),
        reason=str(info[HDR_REASON] or ""),
        failed_at=float(info[HDR_FAILED] or 0.0),
        message=message,
    )
