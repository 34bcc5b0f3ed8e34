"""The consumer: fetch under lease, hand to the pool, apply outcomes in batches, renew leases.

Three threads share the work so that none waits on another:

* the *fetcher* leases up to ``concurrency * prefetch_multiplier`` messages at a time and hands
  them to the pool;
* the *finisher* takes outcomes as they come and applies them in batches, always in the order
  follow-ups published → results stored → messages acknowledged, so a crash at any point leaves
  the message to be delivered again rather than a result or a retry lost;
* the *renewer* extends the leases of everything in flight, so only a dead worker's messages
  ever come back.
"""

from __future__ import annotations

import itertools
import logging
import queue
import threading
import time
from typing import TYPE_CHECKING

from celeriac.exceptions import CeleriacError
from celeriac.worker.executor import ACK, DEAD_LETTER, REQUEUE, Job, Outcome, precheck

if TYPE_CHECKING:
    from celeriac.app import Celeriac
    from celeriac.brokers.base import Delivery
    from celeriac.worker.pools.base import Pool

logger = logging.getLogger("celeriac.worker")

_BATCH = 512
_RETRY_PAUSE = 1.0


class Consumer:
    def __init__(
        self,
        app: Celeriac,
        queues: list[str],
        *,
        prefetch: int,
        hostname: str,
    ) -> None:
        self.app = app
        self.queues = queues
        self.prefetch = max(1, prefetch)
        self.hostname = hostname
        self.pool: Pool | None = None
        self.outcomes: queue.Queue[Outcome | None] = queue.Queue()
        self._inflight: dict[int, Delivery] = {}
        self._early_acked: set[int] = set()
        self._cond = threading.Condition()
        self._ids = itertools.count(1)
        self._fetching = threading.Event()
        self._running = threading.Event()
        self._threads: list[threading.Thread] = []
        self.processed = 0

    # -- lifecycle -------------------------------------------------------------------------------
    def start(self, pool: Pool) -> None:
        self.pool = pool
        self._fetching.set()
        self._running.set()
        for name, target in (
            ("fetcher", self._fetch_loop),
            ("finisher", self._finish_loop),
            ("renewer", self._renew_loop),
        ):
            t = threading.Thread(target=target, name=f"celeriac-{name}", daemon=True)
            t.start()
            self._threads.append(t)

    def on_outcome(self, outcome: Outcome) -> None:
        self.outcomes.put(outcome)

    def stop_fetching(self) -> None:
        self._fetching.clear()
        with self._cond:
            self._cond.notify_all()
        self._threads[0].join()

    def return_unstarted(self, jobs: list[Job]) -> None:
        """Give never-started jobs back to the broker without counting a delivery."""
        for job in jobs:
            with self._cond:
                delivery = self._inflight.pop(job.job_id, None)
                self._cond.notify_all()
            if delivery is not None and job.job_id not in self._early_acked:
                self._safely(lambda d=delivery: self.app.broker.requeue(d, count=False))
        if jobs:
            logger.warning("returned %d unstarted task(s) to the queue", len(jobs))

    def drain(self, timeout: float | None = None) -> None:
        """Wait until every in-flight message has been applied, then stop the threads."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._cond:
            while self._inflight:
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    break
                self._cond.wait(0.1 if left is None else min(0.1, left))
        self._running.clear()
        self.outcomes.put(None)
        for t in self._threads[1:]:
            t.join(5)

    @property
    def inflight(self) -> int:
        return len(self._inflight)

    # -- fetching --------------------------------------------------------------------------------
    def _fetch_loop(self) -> None:
        broker = self.app.broker
        while self._fetching.is_set():
            with self._cond:
                while len(self._inflight) >= self.prefetch and self._fetching.is_set():
                    self._cond.wait(0.5)
                room = self.prefetch - len(self._inflight)
            if not self._fetching.is_set():
                return
            try:
                deliveries = broker.fetch(self.queues, room, timeout=0.5)
            except CeleriacError as exc:
                logger.error("fetch failed, retrying in %.0fs: %s", _RETRY_PAUSE, exc)
                time.sleep(_RETRY_PAUSE)
                continue
            for delivery in deliveries:
                self._dispatch(delivery)

    def _dispatch(self, delivery: Delivery) -> None:
        assert self.pool is not None
        job_id = next(self._ids)
        with self._cond:
            self._inflight[job_id] = delivery
        headers, outcome = precheck(self.app, job_id, delivery)
        if outcome is not None or headers is None:
            assert outcome is not None
            self.outcomes.put(outcome)
            return
        task = self.app.tasks.get(headers.task)
        acks_late = self.app.conf.task_acks_late
        if task is not None and task.acks_late is not None:
            acks_late = bool(task.acks_late)
        if not acks_late:
            self._safely(lambda: self.app.broker.ack([delivery]))
            self._early_acked.add(job_id)
        self.pool.submit(
            Job(
                job_id,
                delivery.message,
                headers,
                delivery.queue,
                delivery.delivery_count,
                self.hostname,
            )
        )

    # -- finishing -------------------------------------------------------------------------------
    def _finish_loop(self) -> None:
        while True:
            first = self.outcomes.get()
            if first is None:
                return
            batch = [first]
            while len(batch) < _BATCH:
                try:
                    item = self.outcomes.get_nowait()
                except queue.Empty:
                    break
                if item is None:
                    self.outcomes.put(None)
                    break
                batch.append(item)
            self._apply(batch)

    def _apply(self, batch: list[Outcome]) -> None:
        app = self.app
        with self._cond:
            pairs = [(o, self._inflight.get(o.job_id)) for o in batch]
        for outcome, _ in pairs:
            for f in outcome.followups:
                self._safely(
                    lambda f=f: app.broker.publish(
                        f.message, queue=f.queue, priority=f.priority, eta=f.eta
                    )
                )
        results = [
            (o.task_id, o.state, o.meta)
            for o, _ in pairs
            if o.meta is not None and o.task_id and o.state
        ]
        if results:
            self._safely(lambda: app.backend.store_encoded(results))  # type: ignore[arg-type]
        acks = [
            d
            for o, d in pairs
            if d is not None and o.action == ACK and o.job_id not in self._early_acked
        ]
        if acks:
            self._safely(lambda: app.broker.ack(acks))
        for outcome, delivery in pairs:
            self._log(outcome)
            if delivery is None or outcome.job_id in self._early_acked:
                continue
            if outcome.action == DEAD_LETTER:
                logger.error(
                    "dead-lettered %s[%s]: %s", outcome.task_name, outcome.task_id, outcome.reason
                )
                self._safely(lambda d=delivery, r=outcome.reason: app.broker.dead_letter(d, r))
            elif outcome.action == REQUEUE:
                self._safely(
                    lambda d=delivery, t=outcome.delay_until: app.broker.requeue(d, delay_until=t)
                )
        with self._cond:
            for outcome in batch:
                self._inflight.pop(outcome.job_id, None)
                self._early_acked.discard(outcome.job_id)
            self.processed += len(batch)
            self._cond.notify_all()

    def _log(self, o: Outcome) -> None:
        if o.reason == "eta":
            return
        if o.state == "FAILURE":
            logger.error(
                "Task %s[%s] failed in %.3fs: %s", o.task_name, o.task_id, o.runtime, o.summary
            )
        elif logger.isEnabledFor(logging.INFO):
            logger.info(
                "Task %s[%s] %s in %.3fs: %s",
                o.task_name,
                o.task_id,
                (o.state or o.action).lower(),
                o.runtime,
                o.summary,
            )

    def _safely(self, op: object) -> None:
        """Run a broker/backend operation, retrying while the worker runs: never drop it."""
        assert callable(op)
        attempt = 0
        while True:
            try:
                op()
                return
            except CeleriacError as exc:
                attempt += 1
                if not self._running.is_set() and attempt > 3:
                    logger.error("giving up after %d attempts: %s", attempt, exc)
                    return
                logger.error("broker/backend operation failed (attempt %d): %s", attempt, exc)
                time.sleep(min(_RETRY_PAUSE * attempt, 10.0))

    # -- lease renewal ---------------------------------------------------------------------------
    def _renew_loop(self) -> None:
        broker = self.app.broker
        interval = max(0.2, broker.visibility_timeout / 3)
        while self._running.is_set():
            time.sleep(interval)
            with self._cond:
                held = [d for j, d in self._inflight.items() if j not in self._early_acked]
            if held:
                try:
                    broker.extend(held)
                except CeleriacError as exc:
                    logger.error("lease renewal failed: %s", exc)
