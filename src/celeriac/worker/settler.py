"""Settling outcomes: what a finished task caused is stored before its message is acknowledged.

Outcomes are applied in batches, always in the order chord counters created → follow-ups
published → results stored → chords counted (and their bodies sent) → messages acknowledged,
dead-lettered or given back, so a crash at any point leaves the message to be delivered again
rather than a result or a retry lost. Once the worker stops, a step that keeps failing is given
up after a few tries so that the shutdown ends; the messages whose results or follow-ups it was
storing are then left leased, unacknowledged, and come back when their leases end.

Either a *finisher* thread takes outcomes as they come (:meth:`Settler.run`), or the thread that
runs tasks settles between two tasks (a driven consumer, see :meth:`Consumer.pump`); then the
acks, and the results when the transport can carry them, ride on its next fetch
(:class:`Deferred`), and a small *flusher* thread settles outcomes that waited while a long task
runs (:meth:`Settler.flush_loop`).
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from functools import partial
from typing import TYPE_CHECKING

from celeriac import sending, states
from celeriac.backends.base import CHORD_RESEND_DELAY, ChordPart, EncodedResult
from celeriac.exceptions import CeleriacError, ConfigurationError, ProtocolError, PublishRefused
from celeriac.protocol.results import make_meta
from celeriac.worker.chords import fire
from celeriac.worker.job import Action, Job, Outcome
from celeriac.worker.outcomes import refuse

if TYPE_CHECKING:
    from celeriac.app import Celeriac
    from celeriac.brokers.base import Delivery
    from celeriac.protocol.message import Message
    from celeriac.protocol.publication import Publication
    from celeriac.transports.base import Combined
    from celeriac.worker.inflight import InFlight

logger = logging.getLogger("celeriac.worker")

_BATCH = 512
#: Failures that trying again cannot mend: a setting, a message, a route refused for good.
PERMANENT = (ConfigurationError, ProtocolError, PublishRefused)
_RETRY_PAUSE = 1.0
#: A driven consumer settles before the next task once the oldest outcome waited this long,
FLUSH_AFTER = 0.005
#: and from its flusher thread once it waited this long (the task thread is busy).
FLUSH_IDLE = 0.05


class _Unsettled(Exception):
    """A step that must come before the acknowledgements was given up (the worker stops)."""


@dataclass(slots=True)
class Deferred:
    """What a driven consumer leaves for its next fetch to send (results first, then acks)."""

    acks: list[Delivery] = field(default_factory=list)
    results: list[EncodedResult] = field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(self.acks or self.results)


class Settler:
    """Applies outcomes to the broker and the result backend, in order (module docstring)."""

    def __init__(
        self,
        app: Celeriac,
        combined: Combined,
        inflight: InFlight,
        *,
        hostname: str,
        running: threading.Event,
        on_settled: Callable[[list[str]], None],
        publish: Callable[[list[Publication]], None] | None = None,
    ) -> None:
        self.app = app
        self.combined = combined
        self.broker = combined.broker
        self.backend = combined.backend
        self.inflight = inflight
        self.hostname = hostname
        #: cleared once the worker stops: failing operations are then given up after a few tries
        self.running = running
        #: told the task ids of settled messages (the revocation watch stops looking at them)
        self.on_settled = on_settled
        #: sends follow-ups (default: the broker's publish_many)
        self._publish = publish or partial(sending.publish, app, self.broker)
        # SimpleQueue: a C implementation, cheaper per task than queue.Queue's Python locks.
        self.outcomes: queue.SimpleQueue[Outcome | None] = queue.SimpleQueue()
        #: When the oldest outcome not applied yet was reported (monotonic; 0: none waiting).
        self.pending_since = 0.0
        #: An operation was given up while stopping: later ones are given up at their first
        #: failure, so a shutdown with the broker or backend unusable ends in bounded time.
        self._gave_up = False

    def report(self, outcome: Outcome, *, driven: bool) -> None:
        self.outcomes.put(outcome)
        # After the put: a flusher that clears the mark and then empties the queue either takes
        # this outcome or leaves the mark set for it.
        if driven and not self.pending_since:
            self.pending_since = time.monotonic()

    # -- the two ways of settling -----------------------------------------------------------------
    def run(self) -> None:
        """The finisher thread: settle outcomes as they come, until :meth:`stop`."""
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
            self.apply_logged(batch)

    def stop(self) -> None:
        self.outcomes.put(None)

    def due(self, waiting: bool) -> bool:
        """Should a driven consumer settle now? Yes once the oldest outcome waited
        :data:`FLUSH_AFTER`, or whenever no job waits to run."""
        since = self.pending_since
        fresh = not since or time.monotonic() - since < FLUSH_AFTER
        return not fresh or (not waiting and not self.outcomes.empty())

    def apply_waiting(self, later: Deferred | None = None) -> None:
        """Apply every outcome reported so far; see :meth:`apply` for ``later``."""
        self.pending_since = 0.0
        batch: list[Outcome] = []
        while True:
            try:
                item = self.outcomes.get_nowait()
            except queue.Empty:
                break
            if item is not None:
                batch.append(item)
        if batch:
            self.apply_logged(batch, later)

    def flush_loop(self, stopped: threading.Event, busy: threading.Lock) -> None:
        """A driven consumer's outcomes wait for the task thread's next pump; while it runs a
        long task, apply them from here so its results do not wait for that task. ``busy`` is
        held by the task thread while it settles or fetches."""
        while not stopped.wait(FLUSH_IDLE):
            since = self.pending_since
            if not since or time.monotonic() - since < FLUSH_IDLE:
                continue
            if busy.acquire(blocking=False):  # else the task thread is at it
                try:
                    self.apply_waiting()
                finally:
                    busy.release()

    # -- applying -------------------------------------------------------------------------------
    def apply_logged(self, batch: list[Outcome], later: Deferred | None = None) -> None:
        try:
            self.apply(batch, later)
        except _Unsettled:
            self._leave_leased(batch)
        except Exception:
            # Not acked, no longer renewed: the messages come back when their leases end.
            logger.exception("applying %d outcome(s) failed; they will be redelivered", len(batch))
            self.on_settled(self.inflight.settled(o.job_id for o in batch))

    def apply(self, batch: list[Outcome], later: Deferred | None = None) -> None:
        """Apply outcomes: counters, follow-ups, results, chords, then acknowledgements.

        Each step is retried until it succeeds (see :meth:`safely`); a message is acked only
        after everything it caused is stored, so a crash anywhere means redelivery, not loss.
        With ``later``, the acks (and, when the transport carries them and the batch asks for
        nothing else, the results) are put there instead of sent: the caller sends them with its
        next fetch, results first.
        """
        inflight = self.inflight
        for gid, size in [start for o in batch for start in o.chord_starts]:
            self._must(partial(self.backend.chord_start, gid, size))
        batch = self._publish_followups(batch)
        pairs = [(o, inflight.get(o.job_id)) for o in batch]
        results = [result for outcome, delivery in pairs for result in _results(outcome, delivery)]
        if results and later is not None and self._plain(batch):
            later.results.extend(results)
        elif results:
            self._must(lambda: self.backend.store_encoded(results))
        self._finish_chords(batch)
        acks = [
            d
            for o, d in pairs
            if d is not None and o.action is Action.ACK and not inflight.is_acked_early(o.job_id)
        ]
        if later is not None:
            later.acks.extend(acks)
        elif acks:
            self.safely(lambda: self.broker.ack(acks))
        for outcome, delivery in pairs:
            _log(outcome)
            if delivery is None or inflight.is_acked_early(outcome.job_id):
                continue
            self._hand_back(outcome, delivery)
        self.on_settled(inflight.settled(o.job_id for o in batch))

    def _publish_followups(self, batch: list[Outcome]) -> list[Outcome]:
        """Publish what the batch causes; an outcome whose follow-ups the broker refuses for
        good (a route to an exchange that does not exist) is refused in turn: its task fails
        with the reason and its message is dead-lettered, and the rest of the batch goes on."""
        followups = [f for o in batch for f in o.followups]
        if not followups:
            return batch
        try:
            self.publish(followups)
            return batch
        except PERMANENT:
            pass  # find out whose follow-ups were refused, one outcome at a time
        out = []
        for outcome in batch:
            try:
                self.publish(outcome.followups)
                out.append(outcome)
            except PERMANENT as exc:
                out.append(self._refused(outcome, exc))
        return out

    def _refused(self, outcome: Outcome, exc: CeleriacError) -> Outcome:
        error = type(exc)(f"what the task sends next cannot be published: {exc}")
        logger.error("task %s[%s]: %s", outcome.task_name, outcome.task_id, error)
        refused = refuse(self.app, outcome.job_id, None, outcome.task_id, error)
        refused.task_name = outcome.task_name
        return refused

    def _hand_back(self, outcome: Outcome, delivery: Delivery) -> None:
        """Dead-letter, requeue or park a message its outcome does not acknowledge."""
        broker = self.broker
        if outcome.action is Action.DEAD_LETTER:
            logger.error(
                "dead-lettered %s[%s]: %s", outcome.task_name, outcome.task_id, outcome.reason
            )
            self.safely(lambda: broker.dead_letter(delivery, outcome.reason))
        elif outcome.action in (Action.REQUEUE, Action.DELAY):
            # Parking a message until its ETA is not a delivery attempt.
            count = outcome.action is Action.REQUEUE
            until = outcome.delay_until
            self.safely(lambda: broker.requeue(delivery, delay_until=until, count=count))

    def _plain(self, batch: list[Outcome]) -> bool:
        """Results only (no chord, follow-up, requeue or dead letter), and a transport that can
        store them with its next fetch."""
        # A task acked on receipt has no ack here to keep its result company: if the result
        # were lost with the broker's channel, the task would not run again to send it.
        return self.combined.carries_results and all(
            o.action is Action.ACK
            and o.chord is None
            and not o.chord_starts
            and not o.followups
            and not self.inflight.is_acked_early(o.job_id)
            for o in batch
        )

    def ack_now(self, delivery: Delivery) -> None:
        """Acknowledge on receipt (``acks_late=False``), retried like every settlement."""
        self.safely(lambda: self.broker.ack([delivery]))

    def send(self, later: Deferred) -> None:
        """Store and ack what ``later`` holds on their own (its fetch failed): the acks only
        once the results are stored."""
        if later.results and not self.safely(lambda: self.backend.store_encoded(later.results)):
            _left_leased(len(later.acks))  # given up while stopping
            return
        if later.acks:
            self.safely(lambda: self.broker.ack(later.acks))

    def publish(self, followups: list[Publication]) -> None:
        if followups:
            self._must(lambda: self._publish(followups))

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
        # A chord completed by a redelivered header task may have had its body sent already,
        # by a worker that died before it could record the sending (chord_done).
        resent = {
            o.chord[0]
            for o in batch
            if o.chord is not None
            and (delivery := self.inflight.get(o.job_id)) is not None
            and delivery.redelivered
        }
        backend = self.backend
        claimed: list[str] = []
        self._must(lambda: claimed.extend(backend.chord_record(parts)))
        for gid in claimed:
            plan, failed = fire(self.app, backend, gid, bodies[gid])
            for start in plan.chord_starts:
                self._must(partial(backend.chord_start, *start))
            publishes = plan.publishes
            if gid in resent and publishes:
                publishes = self._resend_body(publishes)
            self.publish(publishes)
            if failed:
                self._must(partial(backend.store_encoded, failed))
            self.safely(partial(backend.chord_done, gid))
            logger.info("chord %s complete: body %s", gid, "failed" if failed else "sent")

    def _resend_body(self, publishes: list[Publication]) -> list[Publication]:
        """The body of a chord claimed again: not at all if it has a state (the first copy
        ran or runs), else held back :data:`CHORD_RESEND_DELAY` seconds, so that a first copy
        still queued runs first and the second is skipped as already succeeded."""
        ids = [str(p.message.headers.get("id")) for p in publishes]
        known: dict[str, str] = {}
        self._must(lambda: known.update(self.backend.get_states(ids)))
        if any(state != states.PENDING for state in known.values()):
            logger.info("chord body %s was sent before its sender died; not sent again", ids)
            return []
        eta = time.time() + CHORD_RESEND_DELAY
        return [replace(p, eta=max(p.eta or 0.0, eta)) for p in publishes]

    def store_started(self, job: Job, pid: int) -> None:
        """Store STARTED for tasks that track it (``task_track_started`` / ``track_started``)."""
        task = self.app.tasks.get(job.headers.task)
        track = task.track_started if task is not None else None
        if not (self.app.conf.task_track_started if track is None else track):
            return
        backend = self.backend
        meta = make_meta(job.headers.id, states.STARTED, {"pid": pid, "hostname": self.hostname})
        reply_to, correlation_id = _reply_route(job.message, job.headers.id)
        started = EncodedResult(
            job.headers.id, states.STARTED, backend.encode_meta(meta), reply_to, correlation_id
        )
        self.safely(lambda: backend.store_encoded([started]))

    def safely(self, op: Callable[[], object]) -> bool:
        """Run a broker/backend operation, retrying while the worker runs: never drop it.

        Errors that trying again cannot mend (:data:`PERMANENT`) are raised to the caller.
        Once the worker stops, a failing operation is given up after a few tries (and, once one
        was, every later one at its first failure), so that a shutdown ends: False then.
        """
        attempt = 0
        while True:
            try:
                op()
                return True
            except PERMANENT:
                raise
            except CeleriacError as exc:
                attempt += 1
                if not self.running.is_set() and (attempt > 3 or self._gave_up):
                    self._gave_up = True
                    logger.error("giving up after %d attempt(s) while stopping: %s", attempt, exc)
                    return False
                logger.error("broker/backend operation failed (attempt %d): %s", attempt, exc)
                time.sleep(min(_RETRY_PAUSE * attempt, 10.0))

    def _must(self, op: Callable[[], object]) -> None:
        """:meth:`safely`, for a step its messages' acknowledgements must wait for."""
        if not self.safely(op):
            raise _Unsettled

    def _leave_leased(self, batch: list[Outcome]) -> None:
        """Forget a batch without acknowledging it: what it caused was not all stored."""
        inflight = self.inflight
        held = [
            o.job_id
            for o in batch
            if inflight.get(o.job_id) is not None and not inflight.is_acked_early(o.job_id)
        ]
        _left_leased(len(held))
        self.on_settled(inflight.settled(o.job_id for o in batch))


#: Celery's words for the log line of a finished task
_DONE = {"SUCCESS": "succeeded", "RETRY": "retried", "REVOKED": "revoked", "IGNORED": "ignored"}


def _log(o: Outcome) -> None:
    if o.action is Action.DELAY:
        return
    if o.state == "FAILURE":
        # The traceback as Celery logs it; it travels in the task-failed event (not across a
        # dispatch-mode pipe: there the stored result and the event say it).
        tb = o.event[1].get("traceback") if o.event is not None else None
        logger.error(
            "Task %s[%s] failed in %.3fs: %s%s",
            o.task_name,
            o.task_id,
            o.runtime,
            o.summary,
            f"\n{tb.rstrip()}" if tb else "",
        )
    elif logger.isEnabledFor(logging.INFO):
        logger.info(
            "Task %s[%s] %s in %.3fs: %s",
            o.task_name,
            o.task_id,
            _DONE.get(o.state or "", (o.state or o.action.value).lower()),
            o.runtime,
            o.summary,
        )


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


def _left_leased(count: int) -> None:
    logger.error(
        "left %d message(s) leased: what their tasks caused could not be stored before "
        "stopping; they are delivered again when their leases end",
        count,
    )
