"""``--autoscale MAX,MIN``: grow the pool while work waits, shrink it back once work stops.

The rules are Celery's (``celery.worker.autoscale``): the pool starts at MIN; about once a
second the autoscaler compares the work it sees (``qty``) with the pool's size and

* grows to ``min(qty, MAX)`` when that is more than the pool runs now;
* shrinks to ``max(qty, MIN)`` when that is less, but only once ``worker_autoscale_keepalive``
  seconds (30 by default, Celery's ``AUTOSCALE_KEEPALIVE``) have passed since it last grew
  or last saw new work, so a pool does not shrink between two bursts.

Celery counts the requests its worker has reserved, which with its prefetch include messages
waiting for a process. Celeriac's workers lease only what they run (a prefork child leases
its own task), so waiting work stays in the broker: ``qty`` is what the worker holds plus
what its queues have ready (:meth:`Broker.ready <celeriac.brokers.base.Broker.ready>`: not
delayed, not leased by anyone). That is one cheap count per queue a second.

The decision is :func:`decide` (no I/O); :class:`Autoscaler` is the thread that feeds it and
applies what it returns through the pool's own grow/shrink (the one ``pool_grow`` and
``pool_shrink`` use), so a child or thread retired this way finishes its running task first.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from celeriac.exceptions import CeleriacError, ConfigurationError

if TYPE_CHECKING:
    from celeriac.app import Celeriac
    from celeriac.worker.supervisor import Supervisor
    from celeriac.worker.worker import Worker

logger = logging.getLogger("celeriac.worker")

#: Pools whose size can change at run time.
RESIZABLE = ("prefork", "threads")
#: How often the autoscaler looks (and reads the queues' ready counts): Celery's period.
PERIOD = 1.0


@dataclass(frozen=True)
class Bounds:
    """``--autoscale MAX,MIN`` and how long the pool stays grown without new work."""

    max: int
    min: int
    keepalive: float = 30.0

    def __post_init__(self) -> None:
        if not 1 <= self.min <= self.max:
            raise ConfigurationError(
                f"--autoscale {self.max},{self.min}: MAX,MIN needs 1 <= MIN <= MAX"
            )
        if self.keepalive <= 0:
            raise ConfigurationError("worker_autoscale_keepalive must be more than 0 seconds")


def parse(text: str) -> tuple[int, int]:
    """``"10,3"`` -> ``(10, 3)``; ``"10"`` -> ``(10, 0)`` as Celery reads it (MIN then 1 here,
    since a pool keeps at least one process)."""
    parts = [p.strip() for p in text.split(",")]
    try:
        if len(parts) == 1:
            return int(parts[0]), 1
        if len(parts) == 2:
            high, low = int(parts[0]), int(parts[1])
            return high, max(1, low)
    except ValueError:
        pass
    raise ConfigurationError(f"--autoscale {text!r}: expected MAX,MIN (two numbers, e.g. 10,3)")


def check_pool(pool_name: str) -> None:
    """Refuse ``--autoscale`` for a pool whose size is fixed."""
    if pool_name not in RESIZABLE:
        raise ConfigurationError(
            f"--autoscale: the {pool_name} pool has a fixed size; use --pool prefork or threads"
        )


def decide(size: int, qty: int, bounds: Bounds, quiet_for: float) -> int:
    """How many processes/threads to add (negative: retire) for ``qty`` units of work, after
    ``quiet_for`` seconds without growth or new work."""
    grown = min(qty, bounds.max)
    if grown > size:
        return grown - size
    shrunk = max(qty, bounds.min)
    if shrunk < size and quiet_for > bounds.keepalive:
        return shrunk - size
    return 0


class Autoscaler:
    """The thread that applies :func:`decide` once per :data:`PERIOD` (module docstring).

    ``size()`` is the pool's size, ``held()`` what the worker holds (running or prefetched),
    ``done()`` how many tasks it finished so far, ``resize(delta)`` grows or shrinks the pool,
    and ``queues()`` the queues whose ready messages count as waiting work.
    """

    def __init__(
        self,
        app: Celeriac,
        bounds: Bounds,
        *,
        size: Callable[[], int],
        held: Callable[[], int],
        done: Callable[[], int],
        resize: Callable[[int], Any],
        queues: Callable[[], Sequence[str]],
    ) -> None:
        self.app, self.bounds = app, bounds
        self._size, self._held, self._done = size, held, done
        self._resize, self._queues = resize, queues
        self._stopped = threading.Event()
        self._thread: threading.Thread | None = None
        #: tasks received so far (finished + held): a rise is Celery's "task received"
        self._received = 0
        #: when the pool last grew or new work last showed up (monotonic)
        self._last_active = time.monotonic()
        #: the work seen at the last look (``stats``' ``qty``)
        self.qty = 0

    def info(self) -> dict[str, int]:
        """``stats``' ``autoscaler`` entry, as Celery's."""
        return {
            "max": self.bounds.max,
            "min": self.bounds.min,
            "current": self._size(),
            "qty": self.qty,
        }

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="celeriac-autoscaler", daemon=True)
        self._thread.start()

    def halt(self) -> None:
        """Stop resizing from now on, without waiting (safe in a signal handler)."""
        self._stopped.set()

    def stop(self) -> None:
        self._stopped.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(PERIOD + 5)

    def _run(self) -> None:
        while not self._stopped.wait(PERIOD):
            try:
                self.step()
            except CeleriacError as exc:  # a broker hiccup: look again next period
                logger.warning("autoscaler: %s", exc)

    def _waiting(self) -> int:
        broker = self.app.broker
        return sum(broker.ready(q) for q in self._queues())

    def step(self, now: float | None = None) -> int:
        """One look: count the work, resize if :func:`decide` says so; the change made."""
        now = time.monotonic() if now is None else now
        done, held, waiting = self._done(), self._held(), self._waiting()
        qty = self.qty = held + waiting
        # As Celery, the keepalive counts from the last task received.
        if done + held > self._received:
            self._received = done + held
            self._last_active = now
        size = self._size()
        delta = decide(size, qty, self.bounds, now - self._last_active)
        if delta and not self._stopped.is_set():
            logger.info(
                "autoscaler: %s %d (work %d, pool %d -> %d)",
                "scaling up" if delta > 0 else "scaling down",
                abs(delta),
                qty,
                size,
                size + delta,
            )
            self._resize(delta)
            if delta > 0:
                self._last_active = now
        return delta


def local_autoscaler(worker: Worker, bounds: Bounds) -> Autoscaler:
    """Started for a worker that consumes in its own process (the threads pool): it holds what
    its consumer leased, and grows as remote control's ``pool_grow`` does."""
    from celeriac.worker.remote_views import LocalView

    inflight = worker.consumer.inflight
    scaler = Autoscaler(
        worker.app,
        bounds,
        size=lambda: worker.concurrency,
        held=lambda: inflight.unfinished,
        done=lambda: worker.consumer.processed,
        resize=LocalView(worker).resize,
        queues=lambda: list(worker.queues),
    )
    scaler.start()
    return scaler


def supervisor_autoscaler(supervisor: Supervisor, bounds: Bounds) -> Autoscaler:
    """Started for a prefork supervisor: its children hold what they run (their shared-memory
    slots), and the supervisor starts or retires children."""
    worker, slots = supervisor.worker, supervisor.custody.slots
    scaler = Autoscaler(
        worker.app,
        bounds,
        size=lambda: supervisor.size,
        held=slots.active,
        done=slots.processed,
        resize=supervisor.resize,
        queues=lambda: list(worker.queues),
    )
    scaler.start()
    return scaler
