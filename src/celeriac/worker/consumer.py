"""The consumer: fetch under lease, hand to the pool, apply outcomes in batches, renew leases.

Three threads share the work so that none waits on another:

* the *fetcher* leases up to ``concurrency * prefetch_multiplier`` messages at a time and hands
  them to the pool;
* the *finisher* takes outcomes as they come and applies them in batches, always in the order
  follow-ups published → results stored → messages acknowledged, so a crash at any point leaves
  the message to be delivered again rather than a result or a retry lost;
* the *renewer* extends the leases of everything in flight, so only a dead worker's messages
  ever come back, and watches the result backend for revocations of the tasks it holds.

Rate-limited tasks wait for their slot on a small scheduler thread, still leased.

A pool that runs one task at a time on the process's main thread (a consuming prefork child)
*drives* the consumer instead: between tasks it calls :meth:`Consumer.pump`, which applies the
finished outcomes and fetches the next batch on that same thread. The fetcher and finisher
threads are then not started: with one task at a time they only added hand-offs (each a GIL
round trip between three threads) to every task, and nothing ran meanwhile that the pump
does not do in the gaps. Outcomes still go out in batches: before the next task once the
oldest has waited ``_FLUSH_AFTER``, and from a small flusher thread once it has waited
``_FLUSH_IDLE``, so a long task never holds back the result of a short one before it.
"""

from __future__ import annotations

import itertools
import logging
import queue
import threading
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from celeriac import states
from celeriac.backends.base import ChordPart, DisabledBackend, EncodedResult
from celeriac.exceptions import CeleriacError
from celeriac.protocol.results import make_meta
from celeriac.worker.chords import fire
from celeriac.worker.executor import precheck
from celeriac.worker.job import ACK, DEAD_LETTER, REQUEUE, Job, Outcome
from celeriac.worker.limits import RateSchedule, RateScheduler, parse_rate

if TYPE_CHECKING:
    from celeriac.app import Celeriac
    from celeriac.brokers.base import Delivery
    from celeriac.protocol.message import Message
    from celeriac.protocol.publication import Publication
    from celeriac.worker.pools.base import Pool

logger = logging.getLogger("celeriac.worker")

_BATCH = 512
_RETRY_PAUSE = 1.0
_WATCH_INTERVAL = 0.2
#: A driven consumer applies outcomes before the next task once the oldest has waited this long,
_FLUSH_AFTER = 0.005
#: and from its flusher thread when they have waited this long (the task thread is busy).
_FLUSH_IDLE = 0.05


@dataclass(slots=True)
class Deferred:
    """What a driven consumer leaves for its next fetch to send (results first, then acks)."""

    acks: list[Delivery] = field(default_factory=list)
    results: list[EncodedResult] = field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(self.acks or self.results)


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
        self._refill = max(1, self.prefetch // 2)
        self.hostname = hostname
        self.pool: Pool | None = None
        # SimpleQueue: a C implementation, cheaper per task than queue.Queue's Python locks.
        self.outcomes: queue.SimpleQueue[Outcome | None] = queue.SimpleQueue()
        self._inflight: dict[int, Delivery] = {}
        #: dispatched messages whose outcome has not come back yet; ``prefetch`` bounds this
        self._unfinished = 0
        self._early_acked: set[int] = set()
        self._cond = threading.Condition()
        self._ids = itertools.count(1)
        self._fetching = threading.Event()
        self._running = threading.Event()
        self._stopped = threading.Event()
        self._threads: list[threading.Thread] = []
        self._fetcher: threading.Thread | None = None
        self._scheduler = RateScheduler()
        self._rates: dict[str, RateSchedule] = {}
        self._task_ids: dict[int, str] = {}
        self._revoke_seen: set[str] = set()
        self.processed = 0
        #: This consumer's part of a per-worker ``rate_limit`` (a prefork child's: 1/N).
        self.rate_share = 1.0
        #: The pool's thread drives fetching and finishing through :meth:`pump`.
        self.driven = False
        #: When the oldest outcome not applied yet was reported (monotonic; 0: none waiting).
        self._pending_since = 0.0
        # Held by whoever fetches or applies in a driven consumer: stop_fetching and drain wait
        # for the pool's thread to be out of both.
        self._pump_lock = threading.Lock()

    # -- lifecycle -------------------------------------------------------------------------------
    def start(self, pool: Pool) -> None:
        self.pool = pool
        self.combined = self.app.connections.combined()
        pool.on_started = self._on_started
        self._scheduler.submit = pool.submit
        self._fetching.set()
        self._running.set()
        self.driven = pool.drives_consumer
        threads = [
            ("renewer", self._renew_loop),
            ("watcher", self._watch_loop),
            ("scheduler", self._scheduler.run),
        ]
        if self.driven:
            pool.pump = self.pump
            threads.append(("flusher", self._flush_loop))
        else:
            threads[:0] = [("fetcher", self._fetch_loop), ("finisher", self._finish_loop)]
        for name, target in threads:
            t = threading.Thread(target=target, name=f"celeriac-{name}", daemon=True)
            t.start()
            self._threads.append(t)
            if name == "fetcher":
                self._fetcher = t

    def on_outcome(self, outcome: Outcome) -> None:
        self.outcomes.put(outcome)
        # After the put: a flusher that clears the mark and then empties the queue either takes
        # this outcome or leaves the mark set for it.
        if self.driven and not self._pending_since:
            self._pending_since = time.monotonic()
        with self._cond:
            self._unfinished -= 1
            # Wake the fetcher only when a whole refill's worth of room has opened up.
            if self.prefetch - self._unfinished == self._refill:
                self._cond.notify_all()

    def stop_fetching(self) -> list[Job]:
        """Stop leasing more messages; returns jobs still waiting for a rate-limit slot."""
        self._fetching.clear()
        with self._cond:
            self._cond.notify_all()
        if self.driven:
            with self._pump_lock:  # a fetch under way has handed its messages to the pool
                pass
        elif self._fetcher is not None:
            self._fetcher.join()
        return self._scheduler.take_all()

    def pump(self, waiting: bool) -> None:
        """One step of a driven consumer, on the pool's thread between two tasks.

        Applies the finished outcomes (unless jobs are ``waiting`` and the outcomes are still
        fresh), then, when no job is waiting, fetches the next batch, blocking up to half a
        second for one to arrive.
        """
        with self._pump_lock:
            fetch = not waiting and self._fetching.is_set()
            # Acks of what is applied now go with the fetch that follows (one round trip
            # where the broker can do both; see Broker.ack_and_fetch).
            later: Deferred | None = Deferred() if fetch else None
            since = self._pending_since
            if (since and time.monotonic() - since >= _FLUSH_AFTER) or (
                not waiting and not self.outcomes.empty()
            ):
                self._apply_waiting(later)
            if waiting:
                return
            if not fetch:
                time.sleep(0.01)  # stopping: the pool ends its loop once told to
                return
            with self._cond:
                room = self.prefetch - self._unfinished
            if room <= 0 and not later:
                # Everything held waits for a rate-limit slot: look again shortly.
                time.sleep(min(0.05, max(0.0, self._scheduler.next_due() - time.time())))
                return
            timeout = min(0.5, self._scheduler.next_due() - time.time())
            self._fetch_once(room, timeout, later)

    def _flush_loop(self) -> None:
        """A driven consumer's outcomes wait for the task thread's next pump; while it runs a
        long task, apply them from here so its results do not wait for that task."""
        while not self._stopped.wait(_FLUSH_IDLE):
            since = self._pending_since
            if not since or time.monotonic() - since < _FLUSH_IDLE:
                continue
            if self._pump_lock.acquire(blocking=False):  # else the task thread is at it
                try:
                    self._apply_waiting()
                finally:
                    self._pump_lock.release()

    def _apply_waiting(self, later: Deferred | None = None) -> None:
        """Apply every outcome reported so far (a driven consumer's finisher); see
        :meth:`_apply` for ``later``."""
        self._pending_since = 0.0
        batch: list[Outcome] = []
        while True:
            try:
                item = self.outcomes.get_nowait()
            except queue.Empty:
                break
            if item is not None:
                batch.append(item)
        if batch:
            self._apply_logged(batch, later)

    def return_unstarted(self, jobs: list[Job]) -> None:
        """Give never-started jobs back to the broker without counting a delivery."""
        for job in jobs:
            with self._cond:
                delivery = self._inflight.pop(job.job_id, None)
                self._unfinished -= 1
                self._cond.notify_all()
            if delivery is not None and job.job_id not in self._early_acked:
                self._safely(lambda d=delivery: self.app.broker.requeue(d, count=False))
        if jobs:
            logger.warning("returned %d unstarted task(s) to the queue", len(jobs))

    def drain(self, timeout: float | None = None) -> None:
        """Wait until every in-flight message has been applied, then stop the threads."""
        deadline = None if timeout is None else time.monotonic() + timeout
        if self.driven:
            # The pool's thread no longer pumps (stopped, or stuck in a task being abandoned):
            # apply what it left on this thread.
            with self._pump_lock:
                self._apply_waiting()
        with self._cond:
            while self._inflight:
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    break
                self._cond.wait(0.1 if left is None else min(0.1, left))
        self._running.clear()
        self._stopped.set()
        self._scheduler.stop()
        self.outcomes.put(None)
        for t in self._threads:
            if t is not self._fetcher:
                t.join(5)

    @property
    def inflight(self) -> int:
        return len(self._inflight)

    # -- fetching --------------------------------------------------------------------------------
    def _fetch_loop(self) -> None:
        while self._fetching.is_set():
            with self._cond:
                # Refill in batches (half the prefetch at a time) rather than one message per
                # finished task: one claim transaction then serves many tasks. Finished tasks
                # whose results are still being stored do not count against the prefetch, but
                # at most one more prefetch's worth may wait for the finisher.
                while self._fetching.is_set() and (
                    (self._unfinished and self.prefetch - self._unfinished < self._refill)
                    or len(self._inflight) >= 2 * self.prefetch
                ):
                    self._cond.wait(0.5)
                room = min(
                    self.prefetch - self._unfinished, 2 * self.prefetch - len(self._inflight)
                )
            if not self._fetching.is_set():
                return
            self._fetch_once(room, 0.5)

    def _fetch_once(self, room: int, timeout: float, later: Deferred | None = None) -> None:
        """Send what ``later`` holds, lease up to ``room`` messages (waiting up to ``timeout``
        s) and dispatch them."""
        combined = self.combined
        try:
            if later:
                deliveries = combined.store_ack_fetch(
                    later.results,
                    later.acks,
                    self.queues,
                    max(0, room),
                    timeout=max(0.0, timeout),
                )
            else:
                deliveries = combined.fetch(self.queues, room, timeout=max(0.0, timeout))
        except CeleriacError as exc:
            if later:  # whether it went through is unknown: both steps are harmless twice
                self._send(later)
            logger.error("fetch failed, retrying in %.0fs: %s", _RETRY_PAUSE, exc)
            time.sleep(_RETRY_PAUSE)
            return
        except Exception:
            if later:
                self._send(later)
            # A bug or a client library's own error must not stop consuming for good.
            logger.exception("fetch failed unexpectedly, retrying in %.0fs", _RETRY_PAUSE)
            time.sleep(_RETRY_PAUSE)
            return
        stored = self._stored_states(deliveries)
        # Hold the whole batch before running any of it: a pool that runs tasks in this
        # thread would otherwise leave the rest of the batch unrenewed meanwhile.
        with self._cond:
            batch = [(next(self._ids), d) for d in deliveries]
            self._inflight.update(batch)
            self._unfinished += len(batch)
        for job_id, delivery in batch:
            self._dispatch(job_id, delivery, stored.get(delivery.message.task_id or ""))

    def _stored_states(self, deliveries: list[Delivery]) -> dict[str, str]:
        """Result states of a fetched batch in one lookup (revoked? already succeeded?)."""
        backend = self.app.backend
        if isinstance(backend, DisabledBackend) or not deliveries:
            return {}
        # States the broker read along with the deliveries need no lookup of their own.
        known = {
            d.message.task_id: d.stored_state
            for d in deliveries
            if d.stored_state and d.message.task_id
        }
        ids = [
            d.message.task_id for d in deliveries if d.message.task_id and d.stored_state is None
        ]
        if not ids:
            return known
        try:
            return {**known, **backend.get_states(ids)}
        except CeleriacError as exc:
            logger.warning("could not read result states before running tasks: %s", exc)
            return known

    def _dispatch(self, job_id: int, delivery: Delivery, stored_state: str | None) -> None:
        assert self.pool is not None
        headers, outcome = precheck(self.app, job_id, delivery, stored_state)
        if outcome is not None or headers is None:
            assert outcome is not None
            self.on_outcome(outcome)
            return
        with self._cond:
            self._task_ids[job_id] = headers.id
        task = self.app.tasks.get(headers.task)
        acks_late = self.app.conf.task_acks_late
        if task is not None and task.acks_late is not None:
            acks_late = bool(task.acks_late)
        if not acks_late:
            self._safely(lambda: self.app.broker.ack([delivery]))
            self._early_acked.add(job_id)
        job = Job(
            job_id,
            delivery.message,
            headers,
            delivery.queue,
            delivery.delivery_count,
            self.hostname,
        )
        start = self._rate_slot(task) if task is not None else None
        if start is not None and start > time.time():
            self._scheduler.at(start, job)
        else:
            self.pool.submit(job)

    def _rate_slot(self, task: object) -> float | None:
        """When a rate-limited task may start: a shared slot from the broker, else our own."""
        global_rate = parse_rate(getattr(task, "global_rate_limit", None))
        name = str(getattr(task, "name", ""))
        rate: float | None
        if global_rate:
            try:
                start = self.app.broker.reserve_rate_slot(f"rate:{name}", 1.0 / global_rate)
            except CeleriacError as exc:
                logger.warning("shared rate limit unavailable (%s); limiting this worker", exc)
                start = None
            if start is not None:
                return start
            rate = global_rate
        else:
            rate = parse_rate(
                getattr(task, "rate_limit", None) or self.app.conf.task_default_rate_limit
            )
        if not rate:
            return None
        schedule = self._rates.get(name)
        if schedule is None:
            schedule = self._rates[name] = RateSchedule(rate * self.rate_share)
        return schedule.reserve()

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
            self._apply_logged(batch)

    def _apply_logged(self, batch: list[Outcome], later: Deferred | None = None) -> None:
        try:
            self._apply(batch, later)
        except Exception:
            # Not acked, no longer renewed: the messages come back when their leases end.
            logger.exception("applying %d outcome(s) failed; they will be redelivered", len(batch))
            with self._cond:
                for outcome in batch:
                    self._inflight.pop(outcome.job_id, None)
                self._cond.notify_all()

    def _apply(self, batch: list[Outcome], later: Deferred | None = None) -> None:
        """Apply outcomes: counters, follow-ups, results, chords, then acknowledgements.

        Each step is retried until it succeeds (see :meth:`_safely`); a message is acked only
        after everything it caused is stored, so a crash anywhere means redelivery, not loss.
        With ``later``, the acks (and, when the broker carries them and the batch asks for
        nothing else, the results) are put there instead of sent: the caller sends them with its
        next fetch, results first.
        """
        app = self.app
        with self._cond:
            pairs = [(o, self._inflight.get(o.job_id)) for o in batch]
        starts = [start for o in batch for start in o.chord_starts]
        for gid, size in starts:
            self._safely(lambda g=gid, n=size: app.backend.chord_start(g, n))
        self._publish([f for o in batch for f in o.followups])
        results = [result for outcome, delivery in pairs for result in _results(outcome, delivery)]
        if results and later is not None and self._plain(batch):
            later.results.extend(results)  # type: ignore[arg-type]
        elif results:
            self._safely(lambda: app.backend.store_encoded(results))  # type: ignore[arg-type]
        self._finish_chords(batch)
        acks = [
            d
            for o, d in pairs
            if d is not None and o.action == ACK and o.job_id not in self._early_acked
        ]
        if later is not None:
            later.acks.extend(acks)
        elif acks:
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
                # Parking a message until its ETA is not a delivery attempt.
                count = outcome.reason != "eta"
                self._safely(
                    lambda d=delivery, t=outcome.delay_until, c=count: app.broker.requeue(
                        d, delay_until=t, count=c
                    )
                )
        with self._cond:
            for outcome in batch:
                self._inflight.pop(outcome.job_id, None)
                self._early_acked.discard(outcome.job_id)
                self._revoke_seen.discard(self._task_ids.pop(outcome.job_id, ""))
            self.processed += len(batch)
            self._cond.notify_all()

    def _plain(self, batch: list[Outcome]) -> bool:
        """Results only (no chord, follow-up, requeue or dead letter), and a broker that can
        store them with its next fetch."""
        # A task acked on receipt has no ack here to keep its result company: if the result
        # were lost with the broker's channel, the task would not run again to send it.
        return self.combined.carries_results and all(
            o.action == ACK
            and o.chord is None
            and not o.chord_starts
            and not o.followups
            and o.job_id not in self._early_acked
            for o in batch
        )

    def _send(self, later: Deferred) -> None:
        """Store and ack what ``later`` holds on their own (its fetch failed)."""
        if later.results:
            self._safely(lambda: self.app.backend.store_encoded(later.results))
        if later.acks:
            self._safely(lambda: self.app.broker.ack(later.acks))

    def _publish(self, followups: list[Publication]) -> None:
        if not followups:
            return
        broker = self.app.broker
        self._safely(lambda: broker.publish_many(followups))

    def _finish_chords(self, batch: list[Outcome]) -> None:
        """Count finished chord header tasks; fire the bodies of chords this batch completed."""
        parts = [
            ChordPart(
                o.chord[0], o.chord[1], o.task_id, o.state, o.meta, o.chord[2].get("chord_size")
            )
            for o in batch
            if o.chord is not None
            and o.meta is not None
            and o.task_id
            and o.state in (states.SUCCESS, states.FAILURE)
        ]
        if not parts:
            return
        bodies = {o.chord[0]: o.chord[2] for o in batch if o.chord is not None}
        backend = self.app.backend
        claimed: list[str] = []
        self._safely(lambda: claimed.extend(backend.chord_record(parts)))
        for gid in claimed:
            plan, failed = fire(self.app, gid, bodies[gid])
            for start in plan.chord_starts:
                self._safely(lambda s=start: backend.chord_start(*s))
            self._publish(plan.publishes)
            if failed:
                self._safely(lambda r=failed: backend.store_encoded(r))
            self._safely(lambda g=gid: backend.chord_done(g))
            logger.info("chord %s complete: body %s", gid, "failed" if failed else "sent")

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

    def _on_started(self, job: Job, pid: int) -> None:
        """Store STARTED for tasks that track it (``task_track_started`` / ``track_started``)."""
        task = self.app.tasks.get(job.headers.task)
        track = task.track_started if task is not None else None
        if not (self.app.conf.task_track_started if track is None else track):
            return
        backend = self.app.backend
        meta = make_meta(job.headers.id, states.STARTED, {"pid": pid, "hostname": self.hostname})
        reply_to, correlation_id = _reply_route(job.message, job.headers.id)
        started = EncodedResult(
            job.headers.id, states.STARTED, backend.encode_meta(meta), reply_to, correlation_id
        )
        self._safely(lambda: backend.store_encoded([started]))

    # -- revocations -----------------------------------------------------------------------------
    def _watch_loop(self) -> None:
        """Several times a second, look up the held tasks' states: REVOKED ones must not start,
        and running ones revoked with ``terminate`` are stopped."""
        backend = self.app.backend
        if isinstance(backend, DisabledBackend):
            return
        while not self._stopped.wait(_WATCH_INTERVAL):
            with self._cond:
                ids = [t for t in self._task_ids.values() if t not in self._revoke_seen]
            if not ids:
                continue
            try:
                found = backend.get_states(ids)
                for task_id, state in found.items():
                    if state != states.REVOKED:
                        continue
                    terminate = bool(backend.get_meta(task_id).get("revoke", {}).get("terminate"))
                    self._revoke_seen.add(task_id)
                    assert self.pool is not None
                    logger.warning(
                        "task %s revoked%s", task_id, "; terminating it" if terminate else ""
                    )
                    self.pool.revoke(task_id, terminate=terminate)
            except CeleriacError as exc:
                logger.warning("could not check for revoked tasks: %s", exc)

    # -- lease renewal ---------------------------------------------------------------------------
    def _renew_loop(self) -> None:
        broker = self.app.broker
        interval = max(0.2, broker.visibility_timeout / 3)
        while not self._stopped.wait(interval):
            with self._cond:
                held = [d for j, d in self._inflight.items() if j not in self._early_acked]
            if held:
                try:
                    broker.extend(held)
                except CeleriacError as exc:
                    logger.error("lease renewal failed: %s", exc)


def _reply_route(message: Message, task_id: str) -> tuple[str, str]:
    """Where an ``rpc://`` client listens for this task's results: from the task's message."""
    props = message.properties
    return str(props.get("reply_to") or ""), str(props.get("correlation_id") or task_id)


def _results(outcome: Outcome, delivery: Delivery | None) -> list[EncodedResult]:
    """The results an outcome stores, each with the reply route of the task's message (the
    steps of a failed chain go to the same client as the step that failed)."""
    reply_to = ""
    if delivery is not None:
        reply_to = str(delivery.message.properties.get("reply_to") or "")
    out = []
    if outcome.meta is not None and outcome.task_id and outcome.state:
        route = ("", "")
        if delivery is not None:
            route = _reply_route(delivery.message, outcome.task_id)
        out.append(EncodedResult(outcome.task_id, outcome.state, outcome.meta, *route))
    for task_id, state, meta in outcome.extra_results:
        out.append(EncodedResult(task_id, state, meta, reply_to, task_id))
    return out
