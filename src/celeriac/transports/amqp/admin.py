"""Counting, purging, and the dead letters: what a person (or the CLI) asks of the broker.

Dead letters are messages in the dead-letter queue (``celeriac.dead`` by default, bound to the
fanout exchange ``celeriac.dead``) with the reason, source queue, time and an id in
``x-celeriac-*`` headers (:func:`.wire.dead_headers`). They are read on a channel of their own
without acknowledging them, so closing it puts them back in place; a replayed one is
acknowledged once its copy is confirmed in its queue.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from typing import Any

import amqp

from celeriac.brokers.base import DeadLetter
from celeriac.transports.amqp.connection import Link
from celeriac.transports.amqp.declarations import Declarations
from celeriac.transports.amqp.inbox import ADMIN_TIMEOUT, Inbox
from celeriac.transports.amqp.wire import to_dead_letter

#: publishes dead letters again, to their queues (confirmed), from the caller's thread
Replay = Callable[[Sequence[DeadLetter]], None]


class Admin:
    def __init__(
        self, link: Link, declarations: Declarations, inbox: Inbox, replay: Replay
    ) -> None:
        self.link = link
        self.declarations = declarations
        self.inbox = inbox
        self._replay = replay

    def _run(self, fn: Callable[[], Any], what: str) -> Any:
        return self.link.run(fn, ADMIN_TIMEOUT + 5, what)

    def _admin_channel(self) -> amqp.Channel:
        return self.link.channel("admin").channel

    def purge(self, queue: str) -> int:
        def run() -> int:
            self.declarations.queue(queue, delays=True)
            ch = self._admin_channel()
            return sum(
                int(ch.queue_purge(name) or 0) for name in self.declarations.queues_of(queue)
            )

        return int(self._run(run, f"purging {queue!r}"))

    def ready(self, queue: str) -> int:
        """RabbitMQ's ready count of ``queue`` itself (its delay cascade holds only delayed
        messages; what consumers hold is unacked, not ready)."""

        def run() -> int:
            self.declarations.queue(queue, delays=True)
            name = self.declarations.queues_of(queue)[0]
            return int(self._admin_channel().queue_declare(name, passive=True).message_count or 0)

        return int(self._run(run, f"counting {queue!r}"))

    def depth(self, queue: str) -> int:
        def run() -> int:
            self.declarations.queue(queue, delays=True)
            ch = self._admin_channel()
            total = 0
            for _ in range(5):
                # What RabbitMQ counts as ready and what this process holds must be read with
                # no delivery in between, or a message is counted twice or not at all.
                self.inbox.sync(queue)
                self.inbox.sync(queue)
                arrivals = self.inbox.arrivals
                total = 0
                for name in self.declarations.queues_of(queue):
                    ok = ch.queue_declare(name, passive=True)
                    total += int(ok.message_count or 0)
                self.inbox.sync(queue)
                if arrivals == self.inbox.arrivals:
                    break
            # leased (or prefetched) here; other consumers' are not visible
            return total + self.inbox.held_in(queue)

        return int(self._run(run, f"counting {queue!r}"))

    def dead_letters(self, limit: int = 100) -> list[DeadLetter]:
        def run() -> list[DeadLetter]:
            self.declarations.dead()
            ch = self.link.scratch_channel()
            out: list[DeadLetter] = []
            try:
                while len(out) < limit:
                    msg = ch.basic_get(self.declarations.dead_letter_queue, no_ack=False)
                    if msg is None:
                        break
                    out.append(to_dead_letter(msg))
            finally:
                ch.close()  # everything read goes back, in its place
            return out

        return list(self._run(run, "reading dead letters"))

    def replay_dead_letters(self, ids: Sequence[Any] | None = None) -> int:
        if ids is not None and not ids:
            return 0
        wanted = None if ids is None else {int(i) for i in ids}
        dlq = self.declarations.dead_letter_queue

        def start() -> tuple[amqp.Channel, int]:
            self.declarations.dead()
            ch = self.link.scratch_channel()
            return ch, int(ch.queue_declare(dlq, passive=True).message_count or 0)

        def get(ch: amqp.Channel) -> amqp.Message | None:
            return ch.basic_get(dlq, no_ack=False)

        ch, count = self._run(start, "replaying dead letters")
        replayed = 0
        try:
            for _ in range(count):
                msg = self._run(functools.partial(get, ch), "replaying dead letters")
                if msg is None:
                    break
                dead = to_dead_letter(msg)
                if wanted is not None and dead.id not in wanted:
                    continue  # stays unacknowledged: back in place when the channel closes
                self._replay([dead])
                tag = int(msg.delivery_info["delivery_tag"])
                self._run(functools.partial(ch.basic_ack, tag), "replaying dead letters")
                replayed += 1
        finally:
            self.link.submit(ch.close)
        return replayed

    def purge_dead_letters(self) -> int:
        def run() -> int:
            self.declarations.dead()
            ch = self._admin_channel()
            return int(ch.queue_purge(self.declarations.dead_letter_queue) or 0)

        return int(self._run(run, "purging dead letters"))
