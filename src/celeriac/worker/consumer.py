"""The consumer: fetch under lease, hand to the pool, settle outcomes, keep leases.

It wires four parts, each with one job, around one record of what it holds (:class:`InFlight`):

* the :class:`~celeriac.worker.fetcher.Fetcher` leases up to ``prefetch`` messages and hands
  them to the pool;
* the :class:`~celeriac.worker.settler.Settler` applies outcomes, storing what a task caused
  before its message is acknowledged;
* the :class:`~celeriac.worker.leases.LeaseKeeper` renews the leases of everything held, so
  only a dead worker's messages ever come back;
* the :class:`~celeriac.worker.leases.RevocationWatch` stops revoked tasks;
* the :class:`~celeriac.worker.fair.FairWatch` gives back what was leased ahead and waits
  behind tasks running longer than ``worker_fair_after``.

A pool that runs one task at a time on the process's main thread (a consuming prefork child,
solo) *drives* the consumer: between tasks it calls :meth:`Consumer.pump`, which settles the
finished outcomes and fetches the next batch on that same thread, the settlement riding on the
fetch where the transport allows. The fetcher and finisher threads are then not started: with
one task at a time they only added hand-offs (each a GIL round trip between three threads) to
every task.
"""

from __future__ import annotations

import logging
import threading
import time
from functools import partial
from typing import TYPE_CHECKING

from celeriac.backends.base import DisabledBackend
from celeriac.exceptions import CeleriacError
from celeriac.metrics.tasks import TaskMetrics, task_metrics
from celeriac.protocol.publication import Publication, Route
from celeriac.worker.events import TaskEvents, task_events, wrap_started
from celeriac.worker.fair import FairWatch
from celeriac.worker.fetcher import Fetcher
from celeriac.worker.inflight import InFlight
from celeriac.worker.leases import LeaseKeeper, RevocationWatch
from celeriac.worker.settler import Deferred, Settler

if TYPE_CHECKING:
    from collections.abc import Callable

    from celeriac.app import Celeriac
    from celeriac.worker.job import Job, Outcome
    from celeriac.worker.pools.base import Pool

logger = logging.getLogger("celeriac.worker")


class Consumer:
    def __init__(
        self,
        app: Celeriac,
        queues: list[str],
        *,
        prefetch: int,
        hostname: str,
        refill: int = 1,
        fair_after: float | None = None,
        slots: int = 0,
        growth: int = 1,
    ) -> None:
        self.app = app
        self.queues = queues
        self.hostname = hostname
        # With slots, the lease window grows for short tasks (see InFlight).
        self.inflight = InFlight(prefetch, refill, slots=slots, growth=growth)
        self.prefetch = self.inflight.prefetch
        #: give back what waits behind tasks running longer than this (None: never)
        self.fair_after = fair_after
        self.fair: FairWatch | None = None
        self.pool: Pool | None = None
        #: The pool's thread drives fetching and settling through :meth:`pump`.
        self.driven = False
        self._running = threading.Event()
        self._stopped = threading.Event()
        self._threads: list[threading.Thread] = []
        self._fetcher_thread: threading.Thread | None = None
        # Held by whoever fetches or settles in a driven consumer: stop_fetching and drain wait
        # for the pool's thread to be out of both.
        self._pump_lock = threading.Lock()
        #: a driven consumer's fetches: one under way, how many done (``between_fetches``)
        self._in_fetch = False
        self._fetches = 0
        self.rate_share = 1.0
        self.fetcher: Fetcher | None = None
        self.settler: Settler | None = None
        self.events: TaskEvents | None = None  # task events (-E), opened by start()
        #: task counts and runtimes for /metrics (``worker_metrics_port``), made by start()
        self.metrics: TaskMetrics | None = None

    # -- lifecycle -------------------------------------------------------------------------------
    def start(self, pool: Pool) -> None:
        self.pool = pool
        self.driven = pool.drives_consumer
        self.events = task_events(self.app, self.hostname)
        self.metrics = task_metrics(self.app)
        combined = self.app.connections.combined()
        watch = RevocationWatch(combined.backend, self.inflight.task_ids, self._revoke)
        settler = self.settler = Settler(
            self.app,
            combined,
            self.inflight,
            hostname=self.hostname,
            running=self._running,
            on_settled=watch.forget,
        )
        fetcher = self.fetcher = Fetcher(
            self.app,
            combined,
            self.inflight,
            self.queues,
            hostname=self.hostname,
            submit=pool.submit if self.events is None else self._received(pool.submit),
            report=self.on_outcome,
            ack=settler.ack_now,
            unsent=settler.send,
        )
        fetcher.rate_share = self.rate_share
        keeper = LeaseKeeper(combined.broker, self.inflight.renewable)
        pool.on_started = settler.store_started
        if self.events is not None:
            pool.on_started = wrap_started(self.events, settler.store_started)
        fair = self._fair_watch(pool)
        if fair is not None:
            pool.on_started = _also_started(fair, pool.on_started)
        fetcher.fetching.set()
        self._running.set()
        loops: list[tuple[str, Callable[[], None]]] = [
            ("renewer", lambda: keeper.run(self._stopped)),
            ("scheduler", fetcher.scheduler.run),
        ]
        if not isinstance(combined.backend, DisabledBackend):
            loops.append(("watcher", lambda: watch.run(self._stopped)))
        if fair is not None:
            loops.append(("fair", lambda: fair.run(self._stopped)))
        if self.driven:
            pool.pump = self.pump
            loops.append(("flusher", lambda: settler.flush_loop(self._stopped, self._pump_lock)))
        else:
            loops[:0] = [("fetcher", fetcher.run), ("finisher", settler.run)]
        for name, target in loops:
            t = threading.Thread(target=target, name=f"celeriac-{name}", daemon=True)
            t.start()
            self._threads.append(t)
            if name == "fetcher":
                self._fetcher_thread = t

    def _fair_watch(self, pool: Pool) -> FairWatch | None:
        """The thread that gives back what waits behind long tasks, when anything can wait."""
        if self.fair_after is None or self.fair_after <= 0 or self.prefetch <= pool.concurrency:
            return None
        inflight = self.inflight

        def take_returnable() -> list[Job]:
            # A job acknowledged on receipt (acks_late=False) has no message left to give
            # back: it goes back in the pool's waiting line and runs here.
            taken = pool.take_waiting()
            for job in taken:
                if inflight.is_acked_early(job.job_id):
                    pool.submit(job)
            return [job for job in taken if not inflight.is_acked_early(job.job_id)]

        self.fair = FairWatch(
            self.fair_after,
            self.inflight,
            slots=lambda: pool.concurrency,
            take_waiting=take_returnable,
            give_back=partial(self.return_unstarted, why="behind a running task"),
            release=lambda: self.app.broker.stop_consuming(list(self.queues)),
        )
        return self.fair

    def _revoke(self, task_id: str, terminate: bool) -> None:
        assert self.pool is not None
        self.pool.revoke(task_id, terminate=terminate)

    def _received(self, submit: Callable[[Job], None]) -> Callable[[Job], None]:
        events = self.events
        assert events is not None

        def received(job: Job) -> None:
            events.received(job)
            submit(job)

        return received

    def on_outcome(self, outcome: Outcome) -> None:
        assert self.settler is not None
        if self.events is not None:
            self.events.outcome(outcome)
        if self.metrics is not None:
            self.metrics.observe(outcome)
        self.settler.report(outcome, driven=self.driven)
        runtime = outcome.runtime
        if runtime and self.fetcher is not None and self.fetcher.scheduler.holding():
            runtime = 0.0  # jobs wait for rate-limit slots: leasing more would only hoard
        if self.inflight.reported(runtime):
            self._release_excess()
        if self.fair is not None:
            self.fair.finished(outcome.job_id)

    def _release_excess(self) -> None:
        """The lease window stayed at half its largest or less: a broker that sends ahead
        (RabbitMQ) still sends up to the old one. Subscribing afresh (on the next fetch) sets
        the new one; what it had sent and nobody fetched goes back uncounted."""
        logger.info("lease window now %d: sent-ahead messages go back", self.inflight.prefetch)
        try:
            self.app.broker.stop_consuming(list(self.queues))
        except CeleriacError as exc:
            logger.warning("could not narrow the lease window: %s", exc)

    def stop_fetching(self) -> list[Job]:
        """Stop leasing more messages; returns jobs still waiting for a rate-limit slot."""
        fetcher = self.fetcher
        if fetcher is None:
            return []
        # From here on, settling that keeps failing is given up after a few tries (see
        # Settler.safely): first of all the one the pool's thread may be stuck in right now.
        self._running.clear()
        fetcher.fetching.clear()
        with self.inflight.cond:
            self.inflight.cond.notify_all()
        if self.driven:
            with self._pump_lock:  # a fetch under way has handed its messages to the pool
                pass
        elif self._fetcher_thread is not None:
            self._fetcher_thread.join()
        return fetcher.scheduler.take_all()

    def between_fetches(self, timeout: float = 2.0) -> None:
        """Return once a fetch under way when called is over (a driven consumer's: the pool's
        thread may be blocked in one), so a changed queue list holds for every later lease.

        Watched, not waited for on the pump's lock: the pool's thread takes that again at once,
        and a lock is not fair, so a waiter could starve."""
        started = self._fetches
        deadline = time.monotonic() + timeout
        while self._in_fetch and self._fetches == started and time.monotonic() < deadline:
            time.sleep(0.005)

    def pump(self, waiting: bool) -> None:
        """One step of a driven consumer, on the pool's thread between two tasks.

        Settles the finished outcomes (unless jobs are ``waiting`` and the outcomes are still
        fresh), then, when no job is waiting, fetches the next batch, blocking up to half a
        second for one to arrive.
        """
        fetcher, settler = self.fetcher, self.settler
        assert fetcher is not None and settler is not None
        with self._pump_lock:
            fetch = not waiting and fetcher.fetching.is_set()
            # What is settled now goes with the fetch that follows (one round trip where the
            # transport can do both; see Transport.combine); with jobs waiting, results and
            # acks that are due go together in one call that leases nothing.
            later: Deferred | None = Deferred() if fetcher.fetching.is_set() else None
            if settler.due(waiting):
                settler.apply_waiting(later)
            if waiting:
                if later:
                    fetcher.fetch_once(0, 0.0, later)
                return
            if not fetch:
                time.sleep(0.01)  # stopping: the pool ends its loop once told to
                return
            room = self.inflight.room()
            if room <= 0 and not later:
                # Everything held waits for a rate-limit slot: look again shortly.
                time.sleep(min(0.05, max(0.0, fetcher.scheduler.next_due() - time.time())))
                return
            timeout = min(0.5, fetcher.scheduler.next_due() - time.time())
            self._in_fetch = True
            try:
                fetcher.fetch_once(room, timeout, later)
            finally:
                self._in_fetch = False
                self._fetches += 1

    def return_unstarted(self, jobs: list[Job], why: str = "") -> None:
        """Give never-started jobs back to the broker without counting a delivery."""
        broker = self.app.broker
        for job in jobs:
            early = self.inflight.is_acked_early(job.job_id)
            delivery = self.inflight.given_back(job.job_id)
            if self.settler is None:
                continue
            if early:
                # Acknowledged on receipt (acks_late=False): the broker keeps no copy to give
                # back, so the message is sent again rather than lost with this worker.
                self.settler.safely(partial(broker.publish, _again(job)))
            elif delivery is not None:
                self.settler.safely(partial(broker.requeue, delivery, count=False))
        if jobs and not why:
            logger.warning("returned %d unstarted task(s) to the queue", len(jobs))

    def drain(self, timeout: float | None = None) -> None:
        """Wait until every held message has been settled, then stop the threads."""
        if self.driven and self.settler is not None:
            # The pool's thread no longer pumps (stopped, or stuck in a task being abandoned):
            # settle what it left on this thread.
            with self._pump_lock:
                self.settler.apply_waiting()
        self.inflight.wait_until_empty(timeout)
        self._running.clear()
        self._stopped.set()
        if self.fair is not None:
            self.fair.wake()
        if self.fetcher is not None:
            self.fetcher.scheduler.stop()
        if self.settler is not None:
            self.settler.stop()
        for t in self._threads:
            if t is not self._fetcher_thread:
                t.join(5)
        if self.events is not None:
            self.events.close()

    @property
    def processed(self) -> int:
        return self.inflight.processed


def _again(job: Job) -> Publication:
    """A never-started job's message, published again as it came: same queue and priority,
    and its ETA if one is still ahead."""
    message = job.message
    priority = int(message.properties.get("priority") or 0)
    eta = job.headers.eta if job.headers.eta is not None and job.headers.eta > time.time() else None
    return Publication(message, Route(job.queue), priority, eta)


def _also_started(
    fair: FairWatch, started: Callable[[Job, int], None] | None
) -> Callable[[Job, int], None]:
    def on_started(job: Job, pid: int) -> None:
        fair.started(job)
        if started is not None:
            started(job, pid)

    return on_started
