"""An in-process broker for tests and single-process use (solo and threads pools).

It keeps the same delivery rules as the real brokers (leases that expire, delivery counts,
delayed messages, dead letters), so code tested against it behaves the same elsewhere.
"""

from __future__ import annotations

import heapq
import itertools
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from celeriac.brokers import dead_letters
from celeriac.brokers.base import Broker, DeadLetter, Delivery
from celeriac.protocol.message import Message
from celeriac.protocol.publication import Publication, Route
from celeriac.transports.memory.options import MemoryOptions


@dataclass(slots=True)
class _Entry:
    seq: int
    queue: str
    priority: int
    message: Message
    delivery_count: int = 0


class MemoryBroker(Broker):
    options_class = MemoryOptions
    options: MemoryOptions

    def __init__(self, url: str = "memory://", transport_options: dict[str, Any] | None = None):
        super().__init__(url, transport_options)
        self._cond = threading.Condition()
        self._seq = itertools.count()
        self._ready: dict[str, list[tuple[int, int, _Entry]]] = {}
        self._delayed: list[tuple[float, int, _Entry]] = []
        self._leased: dict[int, tuple[float, _Entry]] = {}
        self._dead: list[DeadLetter] = []
        self._rate_next: dict[str, float] = {}
        self._dead_ids = itertools.count(1)

    def _push(self, entry: _Entry) -> None:
        heapq.heappush(self._ready.setdefault(entry.queue, []), (-entry.priority, entry.seq, entry))

    def publish(self, publication: Publication) -> None:
        targets = self.local_targets(publication.route)
        priority, eta = publication.priority, publication.eta
        with self._cond:
            for target in targets:
                entry = _Entry(next(self._seq), target, priority, publication.message)
                if eta is not None and eta > time.time():
                    heapq.heappush(self._delayed, (eta, entry.seq, entry))
                else:
                    self._push(entry)
            self._cond.notify_all()

    def _promote(self, now: float) -> float:
        while self._delayed and self._delayed[0][0] <= now:
            self._push(heapq.heappop(self._delayed)[2])
        for seq, (until, entry) in list(self._leased.items()):
            if until <= now:
                del self._leased[seq]
                self._push(entry)
        nexts = [self._delayed[0][0]] if self._delayed else []
        nexts += [until for until, _ in self._leased.values()]
        return min(nexts, default=now + 1.0)

    def fetch(self, queues: Sequence[str], limit: int, *, timeout: float) -> list[Delivery]:
        self.refuse_broadcast(queues)
        deadline = time.time() + timeout
        with self._cond:
            while True:
                now = time.time()
                next_due = self._promote(now)
                out: list[Delivery] = []
                for queue in queues:
                    heap = self._ready.get(queue)
                    while heap and len(out) < limit:
                        entry = heapq.heappop(heap)[2]
                        entry.delivery_count += 1
                        self._leased[entry.seq] = (now + self.visibility_timeout, entry)
                        out.append(
                            Delivery(
                                entry.message,
                                queue,
                                (entry.seq, entry.delivery_count),
                                entry.delivery_count,
                            )
                        )
                if out or now >= deadline:
                    return out
                self._cond.wait(max(0.0, min(deadline, next_due) - now))

    def _take(self, delivery: Delivery) -> _Entry | None:
        seq, count = delivery.tag
        held = self._leased.get(seq)
        if held is None or held[1].delivery_count != count:
            return None
        del self._leased[seq]
        return held[1]

    def ack(self, deliveries: Sequence[Delivery]) -> None:
        with self._cond:
            for d in deliveries:
                self._take(d)

    def requeue(
        self, delivery: Delivery, *, delay_until: float | None = None, count: bool = True
    ) -> None:
        with self._cond:
            entry = self._take(delivery)
            if entry is None:
                return
            if not count:
                entry.delivery_count -= 1
            if delay_until is not None and delay_until > time.time():
                heapq.heappush(self._delayed, (delay_until, entry.seq, entry))
            else:
                self._push(entry)
            self._cond.notify_all()

    def extend(self, deliveries: Sequence[Delivery]) -> None:
        until = time.time() + self.visibility_timeout
        with self._cond:
            for d in deliveries:
                seq, count = d.tag
                held = self._leased.get(seq)
                if held is not None and held[1].delivery_count == count:
                    self._leased[seq] = (until, held[1])

    def dead_letter(self, delivery: Delivery, reason: str) -> None:
        with self._cond:
            if self._take(delivery) is None:  # stale: the message is someone else's now
                return
            now = time.time()
            self._dead.append(
                DeadLetter(next(self._dead_ids), delivery.queue, reason, now, delivery.message)
            )
            opts = self.options
            drop = dead_letters.excess(
                [d.failed_at for d in self._dead],
                opts.dead_letter_max_count,
                opts.dead_letter_max_age,
                now,
            )
            del self._dead[:drop]

    def reserve_rate_slot(self, key: str, interval: float) -> float | None:
        now = time.time()
        with self._cond:
            start = max(now, self._rate_next.get(key, 0.0))
            self._rate_next[key] = start + interval
            return start

    def purge(self, queue: str) -> int:
        with self._cond:
            n = len(self._ready.pop(queue, []))
            kept = [item for item in self._delayed if item[2].queue != queue]
            n += len(self._delayed) - len(kept)
            self._delayed = kept
            heapq.heapify(self._delayed)
            return n

    def depth(self, queue: str) -> int:
        with self._cond:
            return (
                len(self._ready.get(queue, []))
                + sum(1 for item in self._delayed if item[2].queue == queue)
                + sum(1 for _, e in self._leased.values() if e.queue == queue)
            )

    def ready(self, queue: str) -> int:
        with self._cond:
            return len(self._ready.get(queue, []))

    def dead_letters(self, limit: int = 100) -> list[DeadLetter]:
        with self._cond:
            return list(self._dead[:limit])

    def replay_dead_letters(self, ids: Sequence[Any] | None = None) -> int:
        with self._cond:
            chosen = [d for d in self._dead if ids is None or d.id in ids]
            self._dead = [d for d in self._dead if d not in chosen]
        for dead in chosen:
            self.publish(Publication(dead.message, Route(dead.queue)))
        return len(chosen)

    def purge_dead_letters(self) -> int:
        with self._cond:
            n = len(self._dead)
            self._dead.clear()
            return n
