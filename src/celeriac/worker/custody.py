"""The prefork supervisor's hold on what its consuming children lease.

Each child mirrors the handles of the messages it holds into a shared-memory slot
(:mod:`celeriac.worker.lease_slots`). From its own process and connection, the supervisor

* renews those leases a few times per visibility timeout, so a task that keeps its child from
  running any other thread (C code holding the GIL) cannot let its lease lapse;
* settles what a child held when it dies: a crash requeues the running message at once, with its
  delivery counted (``task_reject_on_worker_lost``; otherwise it fails with ``WorkerLostError``),
  and a child the supervisor killed for its hard time limit or its memory fails the task
  (``TimeLimitExceeded``, ``MemoryLimitExceeded``) and acknowledges it, as the child would
  have. Nothing else is charged: what the child leased and had not started yet (up to
  ``worker_prefetch_multiplier`` messages, ``worker_prefetch_growth`` times that for short
  tasks) goes back to the queue uncounted.

Brokers whose leases are their connections (RabbitMQ: the channel) need none of this: the
broker requeues a dead child's messages itself, and they are not renewed.
"""

from __future__ import annotations

import enum
import logging
import threading
from typing import TYPE_CHECKING

from celeriac import states
from celeriac.backends.base import DisabledBackend, EncodedResult
from celeriac.exceptions import (
    CeleriacError,
    MemoryLimitExceeded,
    TaskRevokedError,
    TimeLimitExceeded,
    WorkerLostError,
)
from celeriac.protocol.results import make_meta
from celeriac.worker.lease_slots import Held, LeaseSlots, SlotWriter

if TYPE_CHECKING:
    from celeriac.app import Celeriac
    from celeriac.brokers.base import Broker

logger = logging.getLogger("celeriac.worker")


class Death(enum.Enum):
    """Why a child ended without settling what it held."""

    CRASHED = "crashed"
    TIME_LIMIT = "time limit"
    MEMORY = "memory"
    #: killed by ``revoke(terminate=True)``: the task ends REVOKED
    REVOKED = "revoked"


class Custody:
    """Renews and, when a child dies, settles what the children hold (module docstring)."""

    def __init__(self, app: Celeriac, size: int) -> None:
        self.app = app
        self.slots = LeaseSlots(size)
        self._broker: Broker | None = None
        self._stopped = threading.Event()
        self._thread: threading.Thread | None = None

    def writer(self, index: int) -> SlotWriter:
        return self.slots.writer(index)

    def held(self, index: int) -> list[Held]:
        return self.slots.read(index)

    def _broker_here(self) -> Broker | None:
        """This process's broker, opened on first use (after the first children forked);
        None when its leases are connections only their holder can keep."""
        if self._broker is None:
            self._broker = self.app.broker
        return None if self._broker.leases_follow_connection else self._broker

    # -- renewing ---------------------------------------------------------------------------------
    def start(self) -> None:
        self._thread = threading.Thread(target=self._renew_loop, name="celeriac-custody")
        self._thread.daemon = True
        self._thread.start()

    def _renew_loop(self) -> None:
        try:
            broker = self._broker_here()
        except CeleriacError as exc:
            logger.error("cannot open the broker to renew the children's leases: %s", exc)
            return
        if broker is None:
            return
        interval = max(0.2, broker.visibility_timeout / 3)
        while not self._stopped.wait(interval):
            self.renew(broker)

    def renew(self, broker: Broker) -> None:
        held = [h.delivery() for i in range(self.slots.count) for h in self.slots.read(i)]
        if not held:
            return
        try:
            broker.extend(held)
        except CeleriacError as exc:
            logger.error("renewing the children's leases failed: %s", exc)

    def stop(self) -> None:
        self._stopped.set()

    # -- a child died ---------------------------------------------------------------------------
    def child_died(self, index: int, death: Death, detail: str) -> int:
        """Settle what the child in slot ``index`` held; how many messages that was.

        For :attr:`Death.REVOKED`, ``detail`` is the id of the task that was terminated."""
        held = self.slots.read(index)
        running = self.slots.running(index)
        self.slots.clear(index)
        if death is Death.REVOKED and detail not in {h.task_id for h in held}:
            self._store_revoked(detail)  # acknowledged on receipt: nothing else to settle
        if not held:
            return 0
        try:
            broker = self._broker_here()
        except CeleriacError as exc:
            logger.error("cannot settle what a dead child held (%s): its leases run out", exc)
            return 0
        if broker is None:
            return 0  # the broker gave them back when the child's connection closed
        running_id = None if running is None else running.get("id")
        for item in held:
            try:
                if item.task_id != running_id and death is not Death.REVOKED:
                    # Leased ahead and never started: not what killed the child.
                    broker.requeue(item.delivery(), count=False)
                    continue
                self._settle(broker, item, death, detail)
            except CeleriacError as exc:
                logger.error(
                    "could not settle %s[%s] after its child died (%s): it comes back when "
                    "its lease runs out",
                    item.task_name,
                    item.task_id,
                    exc,
                )
        return len(held)

    def _settle(self, broker: Broker, item: Held, death: Death, detail: str) -> None:
        delivery = item.delivery()
        conf = self.app.conf
        if death is Death.CRASHED and conf.task_reject_on_worker_lost:
            logger.error(
                "task %s[%s] was running in a child that died (%s); requeued, delivery %d",
                item.task_name,
                item.task_id,
                detail,
                item.delivery_count,
            )
            broker.requeue(delivery, count=True)
            return
        exc: Exception
        if death is Death.REVOKED:
            if item.task_id == detail:
                self._revoked(broker, item)
            else:  # prefetched, never started: back to the queue, not a delivery attempt
                broker.requeue(delivery, count=False)
            return
        if death is Death.TIME_LIMIT:
            exc = TimeLimitExceeded(detail)
        elif death is Death.MEMORY:
            exc = MemoryLimitExceeded(detail)
        else:
            exc = WorkerLostError(detail)
        logger.error("task %s[%s] failed: %s", item.task_name, item.task_id, exc)
        backend = self.app.backend
        if item.task_id and not isinstance(backend, DisabledBackend):
            meta = make_meta(item.task_id, states.FAILURE, exc)
            failure = EncodedResult(item.task_id, states.FAILURE, backend.encode_meta(meta))
            backend.store_encoded([failure])
        if death is Death.TIME_LIMIT and not conf.task_acks_on_failure_or_timeout:
            broker.dead_letter(delivery, f"{type(exc).__name__}: {exc}")
        else:
            broker.ack([delivery])

    def _revoked(self, broker: Broker, item: Held) -> None:
        """A task terminated by a revoke: REVOKED, acknowledged (it must not run again)."""
        logger.warning("task %s[%s] terminated (revoked)", item.task_name, item.task_id)
        if item.task_id:
            self._store_revoked(item.task_id)
        broker.ack([item.delivery()])

    def _store_revoked(self, task_id: str) -> None:
        backend = self.app.backend
        if isinstance(backend, DisabledBackend):
            return
        try:
            meta = make_meta(task_id, states.REVOKED, TaskRevokedError("terminated"))
            backend.store_encoded(
                [EncodedResult(task_id, states.REVOKED, backend.encode_meta(meta))]
            )
        except CeleriacError as exc:
            logger.error("could not store REVOKED for terminated task %s: %s", task_id, exc)
