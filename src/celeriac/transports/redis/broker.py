"""The Redis broker: Celery's queue layout, with leases, delays and dead letters kept in Redis.

A real Celery client or worker can share queues with it (PROTOCOL.md §2): messages are kombu's
JSON envelopes in ``<queue>`` / ``<queue>\\x06\\x16{3,6,9}`` lists (bucket 0 served first: on
Redis a *lower* priority number is more urgent, as in Celery), in-flight messages sit in kombu's
``unacked`` hash and ``unacked_index`` zset, and ``_kombu.binding.<queue>`` is kept.

What it does beyond kombu, all in ``redis.lua`` so every step is atomic on the server:

* fetch pops a batch *and* records the lease in one script call: no popped message ever lives
  only in a client's memory;
* leases have deadlines the worker extends while a task runs, so only a dead worker's messages
  come back; expired leases are restored by a sweep every consumer runs about once a second;
* delayed messages (ETA, countdown, retries) wait in a sorted set per queue, not in a worker;
* a delivery counter per message feeds ``worker_max_deliveries``;
* an element that is not an envelope is dead-lettered with the reason, never dropped.

Exchanges as kombu lays them out: a publish to a direct or topic exchange reads
``_kombu.binding.<exchange>`` (where this broker writes the bindings of ``task_queues``, and
Celery writes its own) and pushes to every matching queue; a fanout exchange (``Broadcast``) is
a PUB/SUB channel (see ``redis_fanout``).

Transport options (``broker_transport_options``): :class:`.options.RedisOptions`. By default
(``delayed_delivery="queue"``) a countdown goes onto the list with its ``eta`` header, as
Celery's client sends it, so a stock Celery worker on the queue holds it as usual; a fetch here
that pops a message whose ``eta`` is ahead parks it in the sorted set until it is due, so a
Celeriac worker never holds one. ``"broker"`` puts it in the sorted set at once. A publish
returns or raises :class:`BrokerError` within ``publish_timeout``, reconnections and retries
included (see ``deadline.py``).
"""

from __future__ import annotations

import binascii
import logging
import re
import threading
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import redis

from celeriac.brokers.base import Broker, DeadLetter, Delivery
from celeriac.exceptions import BrokerError, ConfigurationError, PublishRefused
from celeriac.protocol.message import Message, new_id
from celeriac.protocol.publication import Publication, Route
from celeriac.protocol.timeutil import parse_iso
from celeriac.routing import kombu_topic_pattern, no_queue_bound
from celeriac.transports.redis import dead_letter_store
from celeriac.transports.redis.connection import RedisTarget
from celeriac.transports.redis.deadline import deadline
from celeriac.transports.redis.envelope import decode_envelope, encode_envelope
from celeriac.transports.redis.fanout import FanoutSubscriber, fanout_channel, is_broadcast
from celeriac.transports.redis.options import RedisOptions
from celeriac.transports.redis.scripts import evalsha, evalsha_pipelined, lua

if TYPE_CHECKING:
    from celeriac.backends.base import EncodedResult

logger = logging.getLogger("celeriac.broker.redis")

_SWEEP_BATCH = 1000
SEP = "\x06\x16"


def _delay(when: float | None) -> str:
    """Seconds from now on this machine's clock: the broker then waits that long on its own
    clock, so a skew between this clock and Redis's (or a worker's) cannot shift or loop it."""
    return "" if when is None else repr(float(when) - time.time())


def _bucket_priority(priority: int) -> int:
    return max(0, min(9, int(priority)))


class RedisBroker(Broker):
    """Leased delivery over Redis, in the layout Celery uses (see the module docstring)."""

    priority_higher_first = False  # Celery's Redis buckets: 0 is served first
    #: Messages per round trip (a publish_many call): ~1.3 MB of envelopes of no-op tasks.
    max_batch = 1000
    #: Messages per script call, several pipelined in one round trip. A script runs alone on
    #: the server: 1,000 envelopes kept Redis busy 3.0-3.8 ms (measured, `INFO commandstats`),
    #: 250 keep other clients' commands waiting under 1 ms.
    script_batch = 250
    options_class = RedisOptions
    options: RedisOptions

    def __init__(
        self, url: str, transport_options: dict[str, Any] | None = None, *, target: RedisTarget
    ) -> None:
        super().__init__(url, transport_options)
        opts = self.options
        self.client: redis.Redis = target.client
        self._conns = target.conns
        self.prefix = target.prefix
        # Capped so that a blocked wait never outlasts the socket timeout.
        self.polling_interval = min(opts.polling_interval, 5.0)
        # A dead worker's messages come back within visibility_timeout + sweep_interval.
        self.sweep_interval = (
            min(1.0, self.visibility_timeout / 2)
            if opts.sweep_interval is None
            else opts.sweep_interval
        )
        self.delay_in_broker = opts.delayed_delivery == "broker"
        self.publish_timeout = opts.publish_timeout
        self._script = self.client.register_script(lua("store_results.lua", "broker.lua"))
        self._bound: set[str] = set()
        self._bindings_declared = False
        self._fanout: FanoutSubscriber | None = None
        self._next_sweep = 0.0  # monotonic
        self._rotation = 0
        self._lock = threading.Lock()
        #: Result key prefix fetch reads states and stores results under ('' = it does not;
        #: see read_results), and their expiry in ms.
        self._results_prefix = ""
        self._results_ttl_ms = 0
        self._caps_sent = False

    def _send_caps(self) -> None:
        """Write this broker's dead-letter caps where the script reads them (once, on first
        use): the dead-letter store is shared by every peer of the prefix, and so are its caps,
        the last broker to start setting them."""
        opts = self.options
        self.client.hset(
            f"{self.prefix}celeriac.dead.caps",
            mapping={
                "max_count": opts.dead_letter_max_count or 0,
                "max_age": opts.dead_letter_max_age or 0,
            },
        )
        self._caps_sent = True

    def _call(self, *args: Any) -> Any:
        try:
            if not self._caps_sent:
                self._send_caps()
            with self._conns.command() as client:
                return evalsha(client, self._script, [args[0], self.prefix, *args[1:]])
        except redis.RedisError as exc:
            raise BrokerError(f"Redis broker: {args[0]} failed: {exc}") from exc

    # -- publishing -------------------------------------------------------------------------
    def _refused(self, what: str, exc: redis.RedisError) -> BrokerError:
        """The error a failed publish raises: a key of another type (WRONGTYPE) refuses it for
        good, anything else may pass on a retry."""
        if isinstance(exc, redis.ResponseError):
            if "WRONGTYPE" not in str(exc):
                return BrokerError(f"Redis broker: {what} failed: {exc}")
            return PublishRefused(f"Redis broker: {what} refused: {exc}")
        return BrokerError(
            f"Redis broker: {what} failed (publish_timeout={self.publish_timeout:g}s): {exc}"
        )

    def _held(self, p: Publication) -> float | None:
        """The ETA the sorted set holds ``p`` until, or None: straight onto the list. With
        ``delayed_delivery="queue"`` a message whose ``eta`` header a Celery worker can read
        goes onto the list (that worker holds it, as it holds a Celery client's); one with no
        such header could be held by nobody but us."""
        if p.eta is None or (not self.delay_in_broker and p.message.headers.get("eta")):
            return None
        return p.eta

    def publish(self, publication: Publication) -> None:
        if publication.route.exchange is not None or self.topology.queues:
            self.publish_many([publication])
            return
        self._store([publication], "publish")

    def publish_many(self, publications: Sequence[Publication]) -> None:
        """One round trip: one script call per :attr:`script_batch` messages, pipelined."""
        with deadline(time.monotonic() + self.publish_timeout):  # bindings read within it
            if self.topology.queues or any(p.route.exchange is not None for p in publications):
                publications = self._route(publications)
            if publications:
                self._store(publications, f"publishing {len(publications)} messages")

    def _store(self, publications: Sequence[Publication], what: str) -> None:
        """The script's ``publish`` for ``publications``, routed already (each route's name is
        its queue). The hot path of every ``delay()``: one script call, nothing else. Messages
        in a row for the same queue, priority bucket and delay are one run of the script's
        arguments (a batch to one queue: six arguments and its envelopes)."""
        calls: list[list[str | int]] = []
        args: list[str | int] = []
        per_call = self.script_batch
        in_call = 0
        run: tuple[str, int, str] | None = None
        count_at = 0
        binding: set[str] = set()
        eta = None
        for p in publications:
            queue = p.route.name
            held = self._held(p)
            key = (queue, _bucket_priority(p.priority), _delay(held))
            if not args or in_call >= per_call:
                args, in_call, run = ["publish", self.prefix], 0, None
                calls.append(args)
            if key != run or held is not None:  # a delay is "from now": each its own
                bind = queue not in self._bound and queue not in binding
                if bind:
                    binding.add(queue)
                args += [*key, "1" if bind else "0", 0]
                count_at, run = len(args) - 1, key
            args[count_at] = int(args[count_at]) + 1
            args.append(encode_envelope(p.message, p.route, p.priority, new_id()))
            in_call += 1
            if held is not None and (eta is None or held < eta):
                eta = held
        try:
            with deadline(time.monotonic() + self.publish_timeout):
                if len(calls) == 1:
                    with self._conns.command() as client:
                        evalsha(client, self._script, calls[0])
                else:
                    evalsha_pipelined(self.client, self._script, calls)
        except redis.RedisError as exc:
            raise self._refused(what, exc) from exc
        if binding:
            self._bound |= binding
        if eta is not None:
            self._due(eta)

    def script_publishes(self, publication: Publication) -> list[list[str]] | None:
        """The arguments (queue, priority bucket, delay, envelope, bind) of the ``publish``
        calls of ``broker.lua`` that store ``publication``: its route resolved, nothing sent.
        For a script that stores a message as part of a step of its own (beat claims a tick and
        stores its message in one call: ``beat_store.lua``). None for a broadcast: PUB/SUB
        keeps nothing for a script to store."""
        route = publication.route
        if route.exchange_type == "fanout" or (
            route.exchange is None and self.topology.fanout_bound(route.name)
        ):
            return None
        routed = [publication]
        if route.exchange is not None or self.topology.queues:
            routed = self._route(routed)
        out = []
        for p in routed:
            eta = self._held(p)
            envelope = encode_envelope(p.message, p.route, p.priority, new_id())
            out.append(
                [p.route.name, str(_bucket_priority(p.priority)), _delay(eta), envelope, "1"]
            )
        return out

    def _route(self, publications: Sequence[Publication]) -> list[Publication]:
        """Resolve exchanges as kombu does: bindings from Redis, fanouts published at once.

        What is left goes straight to queues: each a route whose ``name`` is the queue, and
        whose exchange (when it came through one) the envelope records.
        """
        self._declare_bindings()
        out: list[Publication] = []
        tables: dict[str, list[tuple[str, str, str]]] = {}
        for p in publications:
            route = p.route
            if route.exchange is None and self.topology.fanout_bound(route.name):
                route = self.topology.destination(route.name)
            if route.exchange is None:
                out.append(p)
            elif route.exchange_type == "fanout":
                self._publish_fanout(p.message, route, p.priority, p.eta)
            else:
                if route.exchange not in tables:
                    tables[route.exchange] = self._binding_table(route.exchange)
                targets = _lookup(tables[route.exchange], route)
                if not targets:
                    raise PublishRefused(no_queue_bound(route))
                for q in targets:  # the queue name, and the exchange it came through
                    out.append(Publication(p.message, _via(q, route), p.priority, p.eta))
        return out

    def _declare_bindings(self) -> None:
        """Write ``task_queues``' bindings where kombu keeps them, once per process."""
        if self._bindings_declared:
            return
        try:
            with self.client.pipeline(transaction=False) as pipe:
                for q in self.topology.queues.values():
                    if q.broadcast:
                        continue
                    ex = q.bound_to
                    pattern = kombu_topic_pattern(q.key) if ex.type == "topic" else ""
                    member = SEP.join([q.key, pattern, q.name])
                    pipe.sadd(f"{self.prefix}_kombu.binding.{ex.name}", member)
                pipe.execute()
        except redis.RedisError as exc:
            raise BrokerError(f"Redis broker: declaring bindings failed: {exc}") from exc
        self._bindings_declared = True

    def _binding_table(self, exchange: str) -> list[tuple[str, str, str]]:
        try:
            members: Any = self.client.smembers(f"{self.prefix}_kombu.binding.{exchange}")
        except redis.RedisError as exc:
            raise BrokerError(f"Redis broker: reading bindings of {exchange!r}: {exc}") from exc
        table = []
        for raw in members:
            parts = raw.decode("utf-8", "replace").split(SEP)
            if len(parts) == 3:
                table.append((parts[0], parts[1], parts[2]))
        return sorted(table)

    def _publish_fanout(
        self, message: Message, dest: Route, priority: int, eta: float | None
    ) -> None:
        if eta is not None and eta > time.time():
            raise ConfigurationError(
                f"broadcast {dest.name!r}: a broadcast cannot be delayed (nothing stores it)"
            )
        envelope = encode_envelope(message, dest, priority, new_id())
        db = int(self.client.connection_pool.connection_kwargs.get("db", 0) or 0)
        exchange, routing_key = dest.address
        channel = fanout_channel(self.prefix, db, exchange, routing_key)
        try:
            listeners = int(self.client.publish(channel, envelope))
        except redis.RedisError as exc:
            raise BrokerError(f"Redis broker: broadcast to {exchange!r}: {exc}") from exc
        if listeners == 0:  # PUB/SUB keeps nothing: say so rather than drop it silently
            raise PublishRefused(f"broadcast to {exchange!r}: no worker is subscribed")

    def _due(self, when: float) -> None:
        """Sweep no later than ``when`` (unix seconds): this process just delayed a message."""
        at = time.monotonic() + max(0.0, when - time.time())
        with self._lock:
            self._next_sweep = min(self._next_sweep, at)

    # -- consuming --------------------------------------------------------------------------
    def fetch(self, queues: Sequence[str], limit: int, *, timeout: float) -> list[Delivery]:
        return self.ack_and_fetch((), queues, limit, timeout=timeout)

    def ack_and_fetch(
        self, acks: Sequence[Delivery], queues: Sequence[str], limit: int, *, timeout: float
    ) -> list[Delivery]:
        return self.store_ack_fetch((), acks, queues, limit, timeout=timeout)

    def store_ack_fetch(
        self,
        results: Sequence[EncodedResult],
        acks: Sequence[Delivery],
        queues: Sequence[str],
        limit: int,
        *,
        timeout: float,
    ) -> list[Delivery]:
        """Results and acks ride on the first fetch script call: a consumer finishes a batch
        and leases the next in one round trip (results only after :meth:`read_results`)."""
        if results and not self._results_prefix:
            raise TypeError("read_results() was not told where this worker's results live")
        acks = [d for d in acks if not is_broadcast(d)]  # nothing held in Redis
        if not queues or limit <= 0:
            if results or acks:
                self._fetch_once([], 0, acks, results)
            return []
        deadline = time.monotonic() + timeout
        if not self._bindings_declared and self.topology.queues:
            self._declare_bindings()  # kombu's consumers declare theirs too
        # kombu consumes every queue bound to a fanout exchange through PUB/SUB
        bcast = [q for q in queues if self.topology.fanout_bound(q)]
        if bcast:
            if self._fanout is None:
                db = int(self.client.connection_pool.connection_kwargs.get("db", 0) or 0)
                self._fanout = FanoutSubscriber(self.client, self.prefix, db, self.topology)
            self._fanout.subscribe(bcast)
            if acks or results:
                self._fetch_once([], 0, acks, results)
                acks, results = [], ()
            got = self._fanout.drain(limit, timeout if len(bcast) == len(queues) else 0.0)
            if got or len(bcast) == len(queues):
                return got
            queues = [q for q in queues if q not in bcast]
        order = list(queues)
        if len(order) > 1:  # rotate the first queue so a busy one cannot starve the others
            self._rotation = (self._rotation + 1) % len(order)
            order = order[self._rotation :] + order[: self._rotation]
        wake_keys = [f"{self.prefix}celeriac.wake.{q}" for q in order]
        while True:
            got, popped = self._fetch_once(order, limit, acks, results)
            acks, results = [], ()
            got = self._park_early(got)
            if got:
                return got
            if popped:  # everything popped was dead-lettered: look again at once
                continue
            now = time.monotonic()
            wait = min(deadline, self._next_sweep, now + self.polling_interval) - now
            if deadline - now <= 0:
                return []
            if wait >= 0.001:
                self._wait(wake_keys, wait)
            if bcast and self._fanout is not None:
                got = self._fanout.drain(limit)
                if got:
                    return got

    def _park_early(self, got: list[Delivery]) -> list[Delivery]:
        """Hand a message whose ``eta`` header is still ahead (a countdown published onto the
        list for Celery workers, by Celery's client or ours) to the sorted set until it is due,
        rather than to the worker, which would hold it in memory as Celery's does."""
        if not any(d.message.headers.get("eta") for d in got):
            return got
        now = time.time()
        ready = []
        for d in got:
            try:
                eta = parse_iso(d.message.headers.get("eta"))
            except (TypeError, ValueError):
                eta = None  # the worker refuses it with the reason
            if eta is not None and eta > now + 0.01:
                self.requeue(d, delay_until=eta, count=False)
            else:
                ready.append(d)
        return ready

    def _fetch_once(
        self,
        queues: list[str],
        limit: int,
        acks: Sequence[Delivery] = (),
        results: Sequence[EncodedResult] = (),
    ) -> tuple[list[Delivery], bool]:
        now = time.monotonic()
        sweep = now >= self._next_sweep
        reply = self._call(
            "fetch",
            self.visibility_timeout,
            limit,
            "1" if sweep else "0",
            _SWEEP_BATCH,
            self.options.celery_visibility_timeout,
            len(queues),
            *queues,
            self._results_prefix,
            self._results_ttl_ms,
            len(acks),
            *(part for d in acks for part in d.tag),
            *(part for r in results for part in (r.task_id, r.meta)),
        )
        if sweep:
            next_due = float(reply[0]) if reply[0] else -1.0
            interval = self.sweep_interval
            if 0 <= next_due < interval:
                interval = next_due
            with self._lock:
                self._next_sweep = now + interval
        if reply[1]:
            logger.warning("dropped %d duplicate copies of in-flight messages", reply[1])
        out: list[Delivery] = []
        for i in range(2, len(reply), 5):
            queue, tag = reply[i].decode(), reply[i + 1].decode()
            count = int(reply[i + 2])
            state = reply[i + 4].decode()
            try:
                message = decode_envelope(reply[i + 3])
            except (ValueError, binascii.Error) as exc:
                reason = f"unreadable envelope: {exc}"
                logger.error("dead-lettered a message on %r: %s", queue, reason)
                self._call("dead_letter", queue, tag, count, reason)
                continue
            out.append(
                Delivery(
                    message, queue, (queue, tag, count), count, None if state == "?" else state
                )
            )
        return out, len(reply) > 2 or bool(reply[1])

    def read_results(self, prefix: str, ttl_ms: int) -> None:
        """Read each fetched task's stored state, and store results in :meth:`store_ack_fetch`,
        under ``prefix`` (as JSON, the only format Lua reads) with ``ttl_ms`` to live: the
        backend of this same database, paired by its transport (see ``RedisCombined``)."""
        self._results_prefix = prefix
        self._results_ttl_ms = ttl_ms

    def _wait(self, wake_keys: list[str], seconds: float) -> None:
        try:
            with self._conns.command() as client:
                token = client.brpop(wake_keys, timeout=seconds)
        except redis.RedisError as exc:
            raise BrokerError(f"Redis broker: waiting for messages failed: {exc}") from exc
        if token and token[1] == b"d":  # a delayed message was added: learn when it is due
            with self._lock:
                self._next_sweep = 0.0

    def ack(self, deliveries: Sequence[Delivery]) -> None:
        deliveries = [d for d in deliveries if not is_broadcast(d)]  # nothing held in Redis
        if deliveries:
            self._call("ack", 0, *(part for d in deliveries for part in d.tag))

    def extend(self, deliveries: Sequence[Delivery]) -> None:
        deliveries = [d for d in deliveries if not is_broadcast(d)]
        if deliveries:
            self._call(
                "extend", self.visibility_timeout, *(part for d in deliveries for part in d.tag)
            )

    def requeue(
        self, delivery: Delivery, *, delay_until: float | None = None, count: bool = True
    ) -> None:
        if is_broadcast(delivery):
            if self._fanout is not None:
                self._fanout.give_back(delivery, delay_until)
            return
        self._call("requeue", *delivery.tag, _delay(delay_until), "1" if count else "0")
        if delay_until is not None:
            self._due(delay_until)

    def dead_letter(self, delivery: Delivery, reason: str) -> None:
        if is_broadcast(delivery):
            self._call("dead_raw", delivery.queue, delivery.tag[1], reason)
            return
        self._call("dead_letter", *delivery.tag, reason)

    def ready(self, queue: str) -> int:
        # The lists only (one per priority bucket); a countdown sent with its ``eta`` header
        # (``delayed_delivery="queue"``) counts until a fetch parks it.
        p = self.prefix
        keys = [f"{p}{queue}"] + [f"{p}{queue}\x06\x16{step}" for step in (3, 6, 9)]
        try:
            with self.client.pipeline(transaction=False) as pipe:
                for key in keys:
                    pipe.llen(key)
                return sum(int(n) for n in pipe.execute())
        except redis.RedisError as exc:
            raise BrokerError(f"Redis broker: ready count of {queue!r} failed: {exc}") from exc

    def reserve_rate_slot(self, key: str, interval: float) -> float | None:
        return float(self._call("rate", key, repr(float(interval))))

    # -- administration ---------------------------------------------------------------------
    def purge(self, queue: str) -> int:
        return int(self._call("purge", queue))

    def depth(self, queue: str) -> int:
        p = self.prefix
        keys = [f"{p}{queue}"] + [f"{p}{queue}\x06\x16{step}" for step in (3, 6, 9)]
        try:
            with self.client.pipeline(transaction=False) as pipe:
                for key in keys:
                    pipe.llen(key)
                pipe.zcard(f"{p}celeriac.delayed.{queue}")
                pipe.zcard(f"{p}celeriac.leases.{queue}")
                return sum(int(n) for n in pipe.execute())
        except redis.RedisError as exc:
            raise BrokerError(f"Redis broker: depth of {queue!r} failed: {exc}") from exc

    def dead_letters(self, limit: int = 100) -> list[DeadLetter]:
        return dead_letter_store.read(self.client, self.prefix, limit)

    def replay_dead_letters(self, ids: Sequence[Any] | None = None) -> int:
        if ids is not None and not ids:
            return 0
        return int(self._call("replay", *(int(i) for i in ids or ())))

    def purge_dead_letters(self) -> int:
        return dead_letter_store.purge(self.client, self.prefix)

    def close(self) -> None:
        if self._fanout is not None:
            self._fanout.close()
            self._fanout = None
        super().close()


def _via(queue: str, dest: Route) -> Route:
    """``queue``, reached through ``dest``'s exchange."""
    return Route(queue, dest.exchange, dest.routing_key, dest.exchange_type)


def _lookup(table: list[tuple[str, str, str]], dest: Route) -> list[str]:
    """kombu's lookup: a topic binding matches with the regex stored beside it."""
    out: list[str] = []
    for key, pattern, queue in table:
        if dest.exchange_type == "topic":
            hit = re.match(pattern, dest.routing_key) is not None
        else:
            hit = key == dest.routing_key
        if hit and queue not in out:
            out.append(queue)
    return out
