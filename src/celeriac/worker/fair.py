"""Lease ahead, give back when it matters (``worker_fair_after``).

A consumer leases up to ``prefetch`` messages, so short tasks drain in batches with one fetch
round trip for several of them. But a message must not wait long behind a running task while a
slot of this or another worker could run it: once every slot of the pool has been running its
task for longer than ``after`` seconds, the :class:`FairWatch` takes the leased-but-unstarted
jobs out of the pool's waiting list and gives their messages back to the broker without
charging a delivery, and holds leasing (``InFlight.held_back``) until one of those tasks ends.

The watch is a thread of the consumer's own process: a prefork child runs its task on its main
thread, so only another thread can act while the task runs. It sleeps until a task starts, and
while tasks come and go it looks about once per ``after`` seconds (when the newest running task
would reach that age), so a fast drain pays a lock per task start and end, not a thread wake.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from celeriac.worker.inflight import InFlight
    from celeriac.worker.job import Job

logger = logging.getLogger("celeriac.worker")

#: While holding back, how often jobs that arrive anyway (a rate-limit slot came due) are
#: looked for and given back.
_RECHECK = 0.05


class FairWatch:
    """Gives back what waits behind tasks that run longer than ``after`` seconds."""

    def __init__(
        self,
        after: float,
        inflight: InFlight,
        *,
        slots: Callable[[], int],
        take_waiting: Callable[[], list[Job]],
        give_back: Callable[[list[Job]], None],
        release: Callable[[], None] | None = None,
    ) -> None:
        self.after = after
        self.inflight = inflight
        #: how many tasks the pool runs at once (it may be resized)
        self.slots = slots
        self.take_waiting = take_waiting
        self.give_back = give_back
        #: a broker that pushes to its subscribers (RabbitMQ) keeps sending up to its QoS
        #: prefetch: stop that too when holding back (the next fetch subscribes again)
        self.release = release
        self._cond = threading.Condition()
        #: running jobs by id: when each started (monotonic)
        self._running: dict[int, float] = {}
        #: the watch sleeps until a task starts (set under ``_cond``)
        self._idle = False
        #: tasks started so far, and as the watch last looked
        self._starts = 0
        self._seen_starts = 0
        #: jobs given back so far (for tests and logs)
        self.returned = 0

    # -- the pool's side (any thread that starts or ends a task) -----------------------------------
    def started(self, job: Job) -> None:
        with self._cond:
            self._running[job.job_id] = time.monotonic()
            self._starts += 1
            # Only a watch asleep for want of work needs waking: a busy one looks again
            # within ``after`` by itself (a wake per task start cost CPU on a fast drain).
            if self._idle:
                self._idle = False
                self._cond.notify()

    def finished(self, job_id: int) -> None:
        with self._cond:
            if self._running.pop(job_id, None) is None:
                return  # never started (revoked, skipped)
            if self.inflight.held_back:
                # The slot that held things back is free again: lease as before.
                self.inflight.hold_back(False)

    # -- the watch thread -------------------------------------------------------------------------
    def wake(self) -> None:
        """Make the watch look again now (the consumer is stopping: it must not wait a second
        for the thread)."""
        with self._cond:
            self._cond.notify_all()

    def run(self, stopped: threading.Event) -> None:
        while not stopped.is_set():
            due = self._due()
            if due is None:
                continue
            if due and self.release is not None:
                try:
                    self.release()
                except Exception:  # the next fetch subscribes again; nothing is lost
                    logger.exception("could not stop the broker pushing more messages")
            self._return_waiting()

    def _due(self) -> bool | None:
        """Wait until every slot runs a task older than ``after``, or a short while (None).
        True when leasing was just held back, False when it already was."""
        with self._cond:
            running = self._running
            if len(running) < self.slots():
                if self._starts == self._seen_starts:
                    # Nothing started since the last look: sleep until a task starts.
                    self._idle = True
                    self._cond.wait(1.0)
                    self._idle = False
                else:
                    # Tasks come and go: look again once one that starts now could be due.
                    self._seen_starts = self._starts
                    self._cond.wait(self.after)
                return None
            left = max(running.values()) + self.after - time.monotonic()
            if left > 0:
                self._cond.wait(left)
                return None
            # Decided under the lock that finished() takes: a task ending now lifts the hold
            # after this, never before it (which would hold leasing back with nothing running).
            if self.inflight.held_back:
                return False
            self.inflight.hold_back(True)
            return True

    def _return_waiting(self) -> None:
        jobs = self.take_waiting()
        if jobs:
            self.returned += len(jobs)
            logger.info("gave back %d prefetched task(s) waiting behind a running one", len(jobs))
            self.give_back(jobs)
        time.sleep(_RECHECK)
