"""Fetching: lease messages, look up what is already known of their tasks, hand them to the pool.

Each fetched message is checked before it reaches the pool (:func:`executor.precheck`: decodes,
is registered, not expired, not revoked, not past its delivery budget, not already done); what
must not run gets its outcome at once. A task acknowledged on receipt (``acks_late=False``) is
acked here; a rate-limited one waits for its slot on a small scheduler, still leased.

Either a *fetcher* thread refills in batches as room opens (:meth:`Fetcher.run`), or the
thread that runs tasks fetches between two tasks (a driven consumer, :meth:`Consumer.pump`).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from celeriac.backends.base import DisabledBackend
from celeriac.exceptions import CeleriacError
from celeriac.worker.executor import STATE_UNREAD, precheck, revoked
from celeriac.worker.job import Job, Outcome
from celeriac.worker.limits import RateSchedule, RateScheduler, parse_rate

if TYPE_CHECKING:
    from celeriac.app import Celeriac
    from celeriac.brokers.base import Delivery
    from celeriac.transports.base import Combined
    from celeriac.worker.inflight import InFlight
    from celeriac.worker.revoked import Revoked
    from celeriac.worker.settler import Deferred

logger = logging.getLogger("celeriac.worker")

_RETRY_PAUSE = 1.0


class Fetcher:
    """Leases up to the room :class:`InFlight` leaves and dispatches to ``submit``."""

    def __init__(
        self,
        app: Celeriac,
        combined: Combined,
        inflight: InFlight,
        queues: list[str],
        *,
        hostname: str,
        submit: Callable[[Job], None],
        report: Callable[[Outcome], None],
        ack: Callable[[Delivery], None],
        unsent: Callable[[Deferred], None],
        eager: bool = False,
    ) -> None:
        self.app = app
        self.combined = combined
        self.inflight = inflight
        self.queues = queues
        self.hostname = hostname
        #: hands a job to the pool
        self.submit = submit
        #: reports the outcome of a message that must not run
        self.report = report
        #: acknowledges a message on receipt (``acks_late=False``)
        self.ack = ack
        #: stores and acks what a failed combined fetch was carrying
        self.unsent = unsent
        #: jobs run in the caller's process (``apply()``): no rate limits, ``request.is_eager``
        self.eager = eager
        self.fetching = threading.Event()
        self.scheduler = RateScheduler()
        self.scheduler.submit = submit
        self._rates: dict[str, RateSchedule] = {}
        #: ids revoked by broadcast (remote control), set by the worker
        self.revoked: Revoked | None = None
        #: This consumer's part of a per-worker ``rate_limit`` (a prefork child's: 1/N).
        self.rate_share = 1.0

    def run(self) -> None:
        """The fetcher thread: refill whenever a batch's worth of room opened, until stopped."""
        while self.fetching.is_set():
            room = self.inflight.wait_for_room(self.fetching)
            if not self.fetching.is_set():
                return
            self.fetch_once(room, 0.5)

    def fetch_once(self, room: int, timeout: float, later: Deferred | None = None) -> None:
        """Send what ``later`` holds, lease up to ``room`` messages (waiting up to ``timeout``
        s) and dispatch them."""
        combined = self.combined
        try:
            if later:
                deliveries = combined.store_ack_fetch(
                    later.results, later.acks, self.queues, max(0, room), timeout=max(0.0, timeout)
                )
            else:
                deliveries = combined.fetch(self.queues, room, timeout=max(0.0, timeout))
        except Exception as exc:
            if later:  # whether it went through is unknown: both steps are harmless twice
                self.unsent(later)
            if isinstance(exc, CeleriacError):
                logger.error("fetch failed, retrying in %.0fs: %s", _RETRY_PAUSE, exc)
            else:  # a bug or a client library's own error must not stop consuming for good
                logger.exception("fetch failed unexpectedly, retrying in %.0fs", _RETRY_PAUSE)
            time.sleep(_RETRY_PAUSE)
            return
        # Hold the whole batch (its leases are renewed from here on) before reading its states,
        # which may take long with the result store down, and before running any of it: a pool
        # that runs tasks in this thread would otherwise leave the rest unrenewed meanwhile.
        held = self.inflight.add(deliveries)
        stored = self._stored_states(deliveries)
        for job_id, delivery in held:
            self._dispatch(job_id, delivery, stored.get(delivery.message.task_id or ""))

    def _stored_states(self, deliveries: list[Delivery]) -> dict[str, str]:
        """Result states of a fetched batch in one lookup (revoked? already succeeded?)."""
        backend = self.combined.backend
        if isinstance(backend, DisabledBackend) or not deliveries:
            return {}
        # States the transport read along with the deliveries need no lookup of their own.
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
            # Not "no state": a redelivered task may have succeeded (precheck gives it back).
            logger.warning("could not read result states before running tasks: %s", exc)
            return {**dict.fromkeys(ids, STATE_UNREAD), **known}

    def _dispatch(self, job_id: int, delivery: Delivery, stored_state: str | None) -> None:
        headers, outcome = precheck(self.app, job_id, delivery, stored_state)
        if outcome is None and headers is not None and self.revoked and headers.id in self.revoked:
            job = Job(
                job_id, delivery.message, headers, delivery.queue, delivery.delivery_count, ""
            )
            outcome = revoked(self.app, job, terminated=False, store=True)
        if outcome is not None or headers is None:
            assert outcome is not None
            self.report(outcome)
            return
        self.inflight.working_on(job_id, headers.id)
        if not self.eager and logger.isEnabledFor(logging.INFO):
            logger.info("Task %s[%s] received", headers.task, headers.id)
        task = self.app.tasks.get(headers.task)
        acks_late = self.app.conf.task_acks_late
        if task is not None and task.acks_late is not None:
            acks_late = bool(task.acks_late)
        if not acks_late:
            self.ack(delivery)
            self.inflight.acked_early(job_id)
        job = Job(
            job_id,
            delivery.message,
            headers,
            delivery.queue,
            delivery.delivery_count,
            self.hostname,
            self.eager,
        )
        start = self._rate_slot(task) if task is not None and not self.eager else None
        if start is not None and start > time.time():
            self.scheduler.at(start, job)
        else:
            self.submit(job)

    def forget_rate(self, task_name: str | None) -> None:
        """``task_name``'s rate limit changed (None: every one, or this consumer's share): the
        next task starts a new schedule."""
        if task_name is None:
            self._rates = {}
        else:
            self._rates.pop(task_name, None)

    def _rate_slot(self, task: object) -> float | None:
        """When a rate-limited task may start: a shared slot from the broker, else our own."""
        global_rate = parse_rate(getattr(task, "global_rate_limit", None))
        name = str(getattr(task, "name", ""))
        rate: float | None
        if global_rate:
            try:
                start = self.combined.broker.reserve_rate_slot(f"rate:{name}", 1.0 / global_rate)
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
