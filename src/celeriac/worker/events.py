"""A worker's events: ``worker-*`` from the node's main process, ``task-*`` from each consumer.

As Celery's worker: the heart sends ``worker-online`` at start, ``worker-heartbeat`` every
:data:`HEARTBEAT_FREQ` seconds and ``worker-offline`` at a warm stop, with how many tasks the
node holds (``active``) and has finished (``processed``), whenever the worker sends events at
all; task events only with ``-E`` (``worker_send_task_events``). In the prefork shape whose
children consume, each child's consumer sends its own task events under the node's name and
the supervisor's heart counts for the children from their lease slots.
"""

from __future__ import annotations

import logging
import os
import platform
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from celeriac import states
from celeriac.events.dispatcher import EventDispatcher

if TYPE_CHECKING:
    from celeriac.app import Celeriac
    from celeriac.worker.job import Job, Outcome

logger = logging.getLogger("celeriac.events")

#: s between heartbeats (Celery's ``heartbeat_interval``, the ``freq`` field).
HEARTBEAT_FREQ = 2.0


def software() -> dict[str, str]:
    """Celery's ``sw_ident``/``sw_ver``/``sw_sys``: what software the node runs."""
    from celeriac import __version__

    return {"sw_ident": "py-celeriac", "sw_ver": __version__, "sw_sys": platform.system()}


#: (tasks held now, outcomes applied so far)
Stats = Callable[[], tuple[int, int]]


def _loadavg() -> list[float]:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return [0.0, 0.0, 0.0]


class Heart:
    """Sends the node's ``worker-*`` events (module docstring)."""

    def __init__(self, dispatcher: EventDispatcher, stats: Stats, freq: float = HEARTBEAT_FREQ):
        self.dispatcher = dispatcher
        self.stats = stats
        self.freq = freq
        self._stopped = threading.Event()
        self._thread: threading.Thread | None = None

    def _send(self, type: str) -> None:
        try:
            active, processed = self.stats()
        except Exception:  # a counter being replaced must not stop the heart
            logger.exception("reading the worker's counters failed")
            active, processed = 0, 0
        self.dispatcher.send(
            type,
            freq=self.freq,
            active=active,
            processed=processed,
            loadavg=_loadavg(),
            **software(),
        )

    def start(self) -> None:
        self._send("worker-online")
        self._thread = threading.Thread(target=self._beat, name="celeriac-heart", daemon=True)
        self._thread.start()

    def _beat(self) -> None:
        while not self._stopped.wait(self.freq):
            self._send("worker-heartbeat")

    def stop(self) -> None:
        """``worker-offline``, then the channel is closed."""
        if self._stopped.is_set():
            return
        self._stopped.set()
        if self._thread is not None:
            self._thread.join(5.0)
        self._send("worker-offline")
        self.dispatcher.close()


def start_heart(app: Celeriac, hostname: str, stats: Stats) -> Heart | None:
    """The node's heart, started; None when the event channel cannot be opened."""
    try:
        channel = app.connections.event_channel()
    except Exception as exc:
        logger.warning("events are off: cannot open the event channel: %s", exc)
        return None
    heart = Heart(EventDispatcher(channel, hostname), stats)
    heart.start()
    return heart


class TaskEvents:
    """A consumer's ``task-*`` events: received, started, and whatever each outcome says."""

    def __init__(self, dispatcher: EventDispatcher) -> None:
        self.dispatcher = dispatcher

    def received(self, job: Job) -> None:
        h = job.headers
        raw = job.message.headers
        self.dispatcher.send(
            "task-received",
            uuid=h.id,
            name=h.task,
            args=raw.get("argsrepr") or "",
            kwargs=raw.get("kwargsrepr") or "",
            root_id=h.root_id,
            parent_id=h.parent_id,
            retries=h.retries,
            eta=raw.get("eta"),
            expires=raw.get("expires"),
        )

    def started(self, job: Job, pid: int) -> None:
        self.dispatcher.send("task-started", uuid=job.headers.id)

    def outcome(self, outcome: Outcome) -> None:
        if not outcome.task_id:
            return
        made = outcome.event or _from_state(outcome)
        if made is None:
            return
        type, fields = made
        extra: dict[str, Any] = dict(fields)
        if type == "task-succeeded":
            extra["runtime"] = outcome.runtime
        self.dispatcher.send(type, uuid=outcome.task_id, **extra)

    def close(self) -> None:
        self.dispatcher.close()


def _from_state(outcome: Outcome) -> tuple[str, dict[str, Any]] | None:
    """An outcome that crossed a pipe lost its event: say what its state tells."""
    if outcome.state == states.SUCCESS:
        return "task-succeeded", {"result": outcome.summary}
    if outcome.state == states.FAILURE:
        return "task-failed", {"exception": outcome.summary, "traceback": ""}
    if outcome.state == states.RETRY:
        return "task-retried", {"exception": outcome.summary, "traceback": ""}
    if outcome.state == states.REVOKED:
        return "task-revoked", {"terminated": False, "signum": None, "expired": False}
    return None


def task_events(app: Celeriac, hostname: str) -> TaskEvents | None:
    """The consumer's task events when ``worker_send_task_events`` is on, else None."""
    if not app.conf.worker_send_task_events:
        return None
    try:
        channel = app.connections.event_channel()
    except Exception as exc:
        logger.warning("task events are off: cannot open the event channel: %s", exc)
        return None
    return TaskEvents(EventDispatcher(channel, hostname))


def wrap_started(
    events: TaskEvents, then: Callable[[Job, int], None] | None
) -> Callable[[Job, int], None]:
    def started(job: Job, pid: int) -> None:
        events.started(job, pid)
        if then is not None:
            then(job, pid)

    return started
