"""The messages a consumer holds: leased from the broker until their outcome is applied.

One record shared by the consumer's parts: the fetcher adds what it leases and waits for room,
the settler removes what it applied, the lease keeper renews what is held and the revocation
watch looks at the task ids being worked on.
"""

from __future__ import annotations

import itertools
import threading
import time
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from celeriac.brokers.base import Delivery


#: s of work a slot may have leased behind the task it runs when tasks are short: the lease
#: window grows past ``worker_prefetch_multiplier`` (up to ``worker_prefetch_growth`` times)
#: while the tasks' average run time keeps what waits under this
LEASE_AHEAD = 0.004
#: weight of each new run time in the running average
_WEIGHT = 0.1
#: s the window must stay at half its largest or less before a consumer is released (see
#: :meth:`InFlight.reported`): a task preempted on a busy machine pulls the average up for a
#: few tasks, and released for that, a RabbitMQ consumer was re-subscribed 330 times in a
#: 20,000-task drain
SETTLE = 0.5


class InFlight:
    """Leased messages by job id, and how many of them still wait for their outcome.

    With ``slots`` and a ``growth`` beyond 1 (a prefetch beyond one message per slot,
    fairness on), the prefetch adapts: every fetch and settlement costs the same whatever the
    batch (round trips, lease slot writes, thread wake-ups: ~0.85 ms of CPU on RabbitMQ with
    Redis results), so short tasks are leased in bigger batches, as many per slot as
    :data:`LEASE_AHEAD` of their average run time, between ``prefetch`` and ``growth`` times
    it. Longer tasks keep the floor; what waits behind a task that runs long is given back
    (:mod:`.fair`).
    """

    def __init__(self, prefetch: int, refill: int = 1, *, slots: int = 0, growth: int = 1) -> None:
        #: messages dispatched and not finished that this consumer may hold
        self.prefetch = max(1, prefetch)
        #: the window's bounds, per slot; equal: fixed
        self.slots = max(0, slots) if growth > 1 else 0
        self.growth = max(1, growth)
        self._floor = self._ceiling = self.prefetch // self.slots if self.slots else 0
        if self.slots:
            self._ceiling = self.growth * self._floor
        #: how much room must open before a waiting fetcher is woken: 1 leases for every slot
        #: that frees up; more (with a prefetch beyond the slots) refills in batches
        self._batches = refill > 1 or self.slots > 0
        self.refill = max(1, min(refill, self.prefetch))
        #: average run time of the tasks settled here, s (0: none yet)
        self.runtime = 0.0
        #: the largest window since the consumer was last released, and since when the window
        #: has been at half that or less (0: it is not)
        self._peak = self.prefetch
        self._low_since = 0.0
        self.cond = threading.Condition()
        self._held: dict[int, Delivery] = {}
        self._task_ids: dict[int, str] = {}
        self._acked_early: set[int] = set()
        self._ids = itertools.count(1)
        #: dispatched messages whose outcome has not come back yet (``prefetch`` bounds it)
        self.unfinished = 0
        #: outcomes applied so far
        self.processed = 0
        #: called whenever what is held changes (a prefork child mirrors it to its supervisor)
        self.mirror: Callable[[], None] | None = None
        #: no leasing while every slot runs a long task (see :mod:`celeriac.worker.fair`)
        self.held_back = False

    def _changed(self) -> None:
        if self.mirror is not None:
            self.mirror()

    def __len__(self) -> int:
        return len(self._held)

    # -- the fetcher's side ---------------------------------------------------------------------
    def add(self, deliveries: Iterable[Delivery]) -> list[tuple[int, Delivery]]:
        """Hold a fetched batch; each message gets a job id."""
        with self.cond:
            batch = [(next(self._ids), d) for d in deliveries]
            self._held.update(batch)
            self.unfinished += len(batch)
        if batch:
            self._changed()
        return batch

    def room(self) -> int:
        """How many more messages may be fetched now."""
        with self.cond:
            return 0 if self.held_back else self.prefetch - self.unfinished

    def hold_back(self, on: bool) -> None:
        """Lease nothing more (``on``) until called again with False."""
        with self.cond:
            self.held_back = on
            if not on:
                self.cond.notify_all()

    def wait_for_room(self, running: threading.Event) -> int:
        """Block until a refill's worth of room opened (or ``running`` is cleared); the room.

        Finished messages whose outcomes are still being applied do not count against the
        prefetch, but at most one more prefetch's worth may wait to be applied.
        """
        with self.cond:
            while running.is_set() and (
                self.held_back
                or (self.unfinished and self.prefetch - self.unfinished < self.refill)
                or len(self._held) >= 2 * self.prefetch
            ):
                self.cond.wait(0.5)
            return min(self.prefetch - self.unfinished, 2 * self.prefetch - len(self._held))

    def working_on(self, job_id: int, task_id: str) -> None:
        """The job's task id, watched for revocation until it is settled."""
        with self.cond:
            self._task_ids[job_id] = task_id

    def acked_early(self, job_id: int) -> None:
        """Acknowledged on receipt (``acks_late=False``): not the broker's to redeliver now."""
        with self.cond:
            self._acked_early.add(job_id)
        self._changed()

    def is_acked_early(self, job_id: int) -> bool:
        return job_id in self._acked_early

    # -- outcomes --------------------------------------------------------------------------------
    def reported(self, runtime: float = 0.0) -> bool:
        """An outcome came back (its task ran ``runtime`` s; 0: never started or not to be
        counted): its slot is free.

        True when the consumer should be released: the window has been at half its largest or
        less for :data:`SETTLE` s. A broker that sends ahead (RabbitMQ's ``basic.qos``, set
        when a consumer subscribes) would otherwise go on sending up to the old window.
        """
        with self.cond:
            self.unfinished -= 1
            resized = runtime > 0 and self._ceiling > self._floor and self._adapt(runtime)
            # Wake the fetcher only when a whole refill's worth of room has opened up (or the
            # window changed, which may have skipped that point).
            if resized or self.prefetch - self.unfinished == self.refill:
                self.cond.notify_all()
            if self.prefetch * 2 > self._peak:
                self._peak = max(self._peak, self.prefetch)
                self._low_since = 0.0
                return False
            now = time.monotonic()
            if not self._low_since:
                self._low_since = now
            if now - self._low_since < SETTLE:
                return False
            self._peak, self._low_since = self.prefetch, 0.0
            return True

    def _adapt(self, runtime: float) -> bool:
        """Fold ``runtime`` into the average and size the window by it (under ``cond``);
        whether the window changed."""
        average = self.runtime = (
            runtime if not self.runtime else self.runtime + _WEIGHT * (runtime - self.runtime)
        )
        per_slot = min(self._ceiling, max(self._floor, int(LEASE_AHEAD / average)))
        prefetch = per_slot * self.slots
        if prefetch == self.prefetch:
            return False
        self.prefetch = prefetch
        if self._batches:
            self.refill = max(1, prefetch // 2)
        return True

    def resized(self, slots: int, per_slot: int) -> None:
        """The pool now has ``slots`` slots, ``per_slot`` messages each at the floor."""
        with self.cond:
            if self.slots:
                now = self.prefetch // self.slots
                self.slots, self._floor = slots, per_slot
                self._ceiling = self.growth * per_slot
                self.prefetch = max(1, slots * max(per_slot, min(now, self._ceiling)))
            else:
                self.prefetch = max(1, slots * per_slot)
            if self._batches:
                self.refill = max(1, self.prefetch // 2)
            self.cond.notify_all()

    def get(self, job_id: int) -> Delivery | None:
        with self.cond:
            return self._held.get(job_id)

    def given_back(self, job_id: int) -> Delivery | None:
        """A job that never started is returned: forget it; its delivery, unless it was acked
        on receipt (then there is nothing to give back)."""
        with self.cond:
            delivery = self._held.pop(job_id, None)
            self.unfinished -= 1
            self._task_ids.pop(job_id, None)
            early = job_id in self._acked_early
            self._acked_early.discard(job_id)
            self.cond.notify_all()
        self._changed()
        return None if early else delivery

    def settled(self, job_ids: Iterable[int]) -> list[str]:
        """Outcomes applied: forget their messages; the task ids no longer worked on."""
        done = []
        with self.cond:
            for job_id in job_ids:
                self._held.pop(job_id, None)
                self._acked_early.discard(job_id)
                task_id = self._task_ids.pop(job_id, None)
                if task_id is not None:
                    done.append(task_id)
                self.processed += 1
            self.cond.notify_all()
        self._changed()
        return done

    # -- the lease keeper and the revocation watch ------------------------------------------------
    def renewable(self) -> list[Delivery]:
        """Held messages whose leases the broker still keeps (not acked on receipt)."""
        with self.cond:
            return [d for j, d in self._held.items() if j not in self._acked_early]

    def held(self) -> list[Delivery]:
        """Every held message (remote control's ``active`` and ``reserved``)."""
        with self.cond:
            return list(self._held.values())

    def task_ids(self) -> list[str]:
        with self.cond:
            return list(self._task_ids.values())

    def wait_until_empty(self, timeout: float | None) -> bool:
        """Wait until every held message was settled; False if ``timeout`` ran out first."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self.cond:
            while self._held:
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    return False
                self.cond.wait(0.1 if left is None else min(0.1, left))
        return True
