"""Consuming: what RabbitMQ pushed to this process, held under lease until settled.

The lease is the channel: unacknowledged deliveries go back to the queue when the ``consume``
channel or the connection dies, so a lease never needs extending (RabbitMQ's
``consumer_timeout``, 30 min by default, still closes a channel whose delivery stays
unacknowledged longer: tasks that run longer need it raised on the server).

The consumers' callbacks run on the link's I/O thread and put deliveries in a buffer that
:meth:`Inbox.fetch` takes from; a fetch only hands work to the I/O thread when it must
subscribe. Acks are handed over without waiting (AMQP does not answer them) and written in the
order they were handed over: ``multiple=True`` over the run of the lowest outstanding tags, the
rest one by one (a multiple ack written ahead of a single ack of a lower tag would make that tag
unknown to RabbitMQ, which closes the channel). Handles from a dead channel are dropped.

Delivery counts: 1 + ``x-delivery-count`` on quorum queues; on classic ones 1 + the
``x-celeriac-deliveries`` header a republished message carries (the broker republishes a
redelivered message with its count, see ``AMQPBroker.fetch``).
"""

from __future__ import annotations

import functools
import logging
import threading
import time
from collections import Counter, deque
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

import amqp

from celeriac.brokers.base import Delivery
from celeriac.exceptions import BrokerError
from celeriac.routing import Topology
from celeriac.transports.amqp.connection import CONNECTION_ERRORS, Link
from celeriac.transports.amqp.declarations import Declarations
from celeriac.transports.amqp.wire import Tag, to_message

if TYPE_CHECKING:
    from celeriac.backends.base import EncodedResult
    from celeriac.transports.amqp.rpc_backend import RPCBackend

logger = logging.getLogger("celeriac.broker.amqp")

ADMIN_TIMEOUT = 30.0


class Inbox:
    """The deliveries of one broker's consumers, on the link's ``consume`` channel."""

    def __init__(
        self, link: Link, declarations: Declarations, topology: Callable[[], Topology]
    ) -> None:
        self.link = link
        self.declarations = declarations
        self._topology = topology
        # written on the I/O thread, read by fetch callers; guarded by _cond
        self._cond = threading.Condition()
        self._buffer: deque[Delivery] = deque()
        self._epoch = 0
        self._consumers: dict[str, tuple[str, int]] = {}  # queue -> (consumer tag, prefetch)
        self._held: dict[int, tuple[str, str]] = {}  # delivery tag -> (queue, consumer tag)
        self._held_by: Counter[str] = Counter()
        #: deliveries received so far (``depth`` reads it to see whether one came in between)
        self.arrivals = 0

    # -- fetching --------------------------------------------------------------------------------
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
                consume = functools.partial(self._consume, list(queues), limit, sync)
                self.link.run(consume, ADMIN_TIMEOUT + 5, "subscribing")
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

    def arrived(self, queues: Sequence[str], limit: int) -> list[Delivery]:
        """What RabbitMQ already sent, up to ``limit``: no round trip, no subscription change
        (a fetch that will not wait asks RabbitMQ first, twice; see :meth:`_consume`)."""
        if not queues or limit <= 0:
            return []
        with self._cond:
            return self._take(set(queues), limit)

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

    def _consume(self, queues: list[str], limit: int, sync: bool = False) -> None:
        """Consume ``queues`` with room for ``limit`` more deliveries each (QoS prefetch); on
        the I/O thread."""
        chan = self.link.channel("consume")
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
        ch = chan.channel
        for q, old in plan:
            self.declarations.queue(q)
            if old is not None:
                ch.basic_cancel(old)
            ch.basic_qos(0, limit, False)
            ctag = ch.basic_consume(
                self._topology().physical(q),
                callback=functools.partial(self._on_message, q, chan.epoch),
                on_cancel=self._on_cancel,
            )
            with self._cond:
                self._consumers[q] = (str(ctag), limit)
        if sync:
            # Twice: RabbitMQ may answer the first round trip before it forwards a delivery
            # its queue had already sent to our channel.
            self.sync(queues[0])
            self.sync(queues[0])

    def _on_message(self, queue: str, epoch: int, msg: amqp.Message) -> None:
        info = msg.delivery_info
        message, carried, quorum_count = to_message(msg)
        redelivered = bool(info["redelivered"])
        extra = quorum_count if quorum_count is not None else int(redelivered)
        tag = Tag(epoch, int(info["delivery_tag"]), redelivered, quorum_count is not None)
        delivery = Delivery(message, queue, tag, 1 + carried + extra)
        ctag = str(info["consumer_tag"])
        with self._cond:
            if epoch != self._epoch:
                return
            self._held[tag.delivery_tag] = (queue, ctag)
            self._held_by[ctag] += 1
            self.arrivals += 1
            self._buffer.append(delivery)
            self._cond.notify_all()

    def unsubscribe(self, queues: Sequence[str]) -> list[Delivery]:
        """Cancel the consumers of ``queues``; what they received that no fetch took (still
        held here, to be given back by the caller)."""
        gone = set(queues)

        def cancel() -> None:
            chan = self.link.existing("consume")
            with self._cond:
                tags = [self._consumers.pop(q)[0] for q in gone if q in self._consumers]
            if chan is not None and chan.epoch == self._epoch:
                for ctag in tags:
                    chan.channel.basic_cancel(ctag)

        self.link.run(cancel, ADMIN_TIMEOUT + 5, "unsubscribing")
        with self._cond:
            left = [d for d in self._buffer if d.queue in gone and d.tag.epoch == self._epoch]
            self._buffer = deque(d for d in self._buffer if d.queue not in gone)
        return left

    def _on_cancel(self, consumer_tag: str) -> None:
        """RabbitMQ cancelled a consumer (its queue was deleted): the next fetch declares the
        queue again and subscribes afresh."""
        with self._cond:
            gone = [q for q, (ctag, _) in self._consumers.items() if ctag == consumer_tag]
            for q in gone:
                del self._consumers[q]
                self.declarations.declared.discard(q)
        logger.warning("AMQP: RabbitMQ cancelled the consumer of %s", ", ".join(gone) or "?")

    def sync(self, queue: str) -> None:
        """Wait until RabbitMQ has processed our acks and we have every delivery it sent (on
        the I/O thread): a round trip on the ``consume`` channel, whose deliveries sent before
        the answer are dispatched before it."""
        chan = self.link.existing("consume")
        if chan is not None:
            chan.channel.queue_declare(self._topology().physical(queue), passive=True)

    def held_in(self, queue: str) -> int:
        """Deliveries of ``queue`` leased (or prefetched) here."""
        with self._cond:
            return sum(1 for q, _ in self._held.values() if q == queue)

    # -- settling --------------------------------------------------------------------------------
    def current(self, delivery: Delivery) -> bool:
        """Is ``delivery`` still leased here, on the open channel?"""
        tag: Tag = delivery.tag
        with self._cond:
            return tag.epoch == self._epoch and tag.delivery_tag in self._held

    def _release(self, tags: Sequence[Tag]) -> tuple[list[int], list[int]]:
        """Forget ``tags`` held on the current channel: ``(run, singles)``, under ``_cond``.

        ``run`` is the lowest outstanding tags, all in this batch (one ack with
        ``multiple=True`` covers them); ``singles`` go one by one. Tags of an older channel
        are dropped (RabbitMQ has requeued those messages).
        """
        mine = sorted(
            t.delivery_tag for t in tags if t.epoch == self._epoch and t.delivery_tag in self._held
        )
        if not mine:
            return [], []
        held = sorted(self._held)
        prefix = 0
        while prefix < len(mine) and held[prefix] == mine[prefix]:
            prefix += 1
        for t in mine:
            _, ctag = self._held.pop(t)
            self._held_by[ctag] -= 1
            if not self._held_by[ctag]:
                # One entry per consumer tag ever used would grow with every resubscription.
                del self._held_by[ctag]
        if prefix > 1:
            return mine[:prefix], mine[prefix:]
        return [], mine

    def ack(self, deliveries: Sequence[Delivery], *, written: bool = False) -> None:
        """Forget the deliveries now; the I/O thread writes the ``basic.ack`` after.

        AMQP does not answer an ack, so waiting for it to be written bought the caller
        nothing: an ack lost with its connection means a redelivery either way. Except where
        a copy of the message was just sent in its place (a count carried, a requeue): with
        ``written``, this returns once the ack is on the socket, so that a process that dies
        running the copy cannot leave the original unacknowledged too (two copies, each
        counting its own deliveries).
        """
        if not deliveries:
            return
        with self._cond:  # released and handed over in one step: written in this order
            epoch = self._epoch
            run, singles = self._release([d.tag for d in deliveries])
            if not (run or singles):
                return
            write = functools.partial(self._write, epoch, run, singles, True)
            if not written:
                self.link.submit(write)
                return
            done = self.link.later(write)
        try:
            self.link.wait(done, ADMIN_TIMEOUT, "acknowledging")
        except BrokerError as exc:  # as with an ack not waited for: the message comes back
            logger.warning("AMQP: an acknowledgement may not have been written: %s", exc)

    def give_back(self, delivery: Delivery) -> None:
        """Put ``delivery`` back in its place in the queue (``basic.reject``, requeued)."""
        with self._cond:
            epoch = self._epoch
            run, singles = self._release([delivery.tag])
            if not (run or singles):
                return
            done = self.link.later(functools.partial(self._write, epoch, run, singles, False))
        self.link.wait(done, ADMIN_TIMEOUT, "requeueing")

    def _write(self, epoch: int, run: list[int], singles: list[int], ack: bool) -> None:
        """Ack (or reject, requeueing) on the ``consume`` channel, on the I/O thread."""
        chan = self.link.existing("consume")
        if chan is None or chan.epoch != epoch:
            return  # the channel died: RabbitMQ requeued them
        ch = chan.channel
        if ack:
            if run:
                ch.basic_ack(run[-1], multiple=True)
            for t in singles:
                ch.basic_ack(t)
        else:
            for t in run + singles:
                ch.basic_reject(t, requeue=True)

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
            run, singles = self._release([d.tag for d in acks])
            if sends or run or singles:
                job = functools.partial(self._reply_and_ack, rpc, epoch, sends, run, singles)
                self.link.submit(job)
        return self.fetch(queues, limit, timeout=timeout) if limit > 0 else []

    def _reply_and_ack(
        self,
        rpc: RPCBackend,
        epoch: int,
        sends: list[tuple[str, str, bytes]],
        run: list[int],
        singles: list[int],
    ) -> None:
        chan = self.link.existing("consume")
        if chan is None or chan.epoch != epoch:
            # The tasks' channel died: RabbitMQ delivers them again and they run again.
            return
        try:
            for reply_to, correlation_id, data in sends:
                rpc.publish_reply(chan.channel, reply_to, correlation_id, data)
        except CONNECTION_ERRORS:
            raise  # the link reconnects; the tasks come back
        except Exception as exc:
            # No ack follows: the tasks run again (given back now, the channel lives).
            logger.warning("AMQP: results not sent, their tasks will run again: %r", exc)
            self._write(epoch, run, singles, False)
            return
        self._write(epoch, run, singles, True)
