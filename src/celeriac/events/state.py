"""What the events say about a cluster: its workers and its recent tasks, in memory.

Feed every event to :meth:`State.event` (``EventReceiver(app, {"*": state.event})``). A worker
is alive while its last heartbeat (or ``worker-online``) is younger than twice its ``freq``
(Celery's window); ``worker-offline`` ends it at once. A task's state is that of its latest
event, except that a finished task (succeeded, failed, revoked, rejected) does not go back to
an earlier state when a late event (``task-sent`` from a client, say) arrives after it.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

from celeriac import states
from celeriac.events.channel import Event

#: The task state each task event means.
TASK_STATES = {
    "task-sent": states.PENDING,
    "task-received": "RECEIVED",
    "task-started": states.STARTED,
    "task-succeeded": states.SUCCESS,
    "task-failed": states.FAILURE,
    "task-retried": states.RETRY,
    "task-revoked": states.REVOKED,
    "task-rejected": "REJECTED",
}
FINISHED = frozenset({states.SUCCESS, states.FAILURE, states.REVOKED, "REJECTED"})
#: Celery's ``HEARTBEAT_EXPIRE_WINDOW``: a worker is gone after ``freq`` x this / 100.
EXPIRE_WINDOW = 200


@dataclass
class WorkerState:
    hostname: str
    pid: int | None = None
    freq: float = 2.0
    last_heartbeat: float | None = None
    active: int = 0
    processed: int = 0
    loadavg: list[float] = field(default_factory=list)
    sw_ident: str = ""
    sw_ver: str = ""
    sw_sys: str = ""
    offline: bool = False

    def alive(self, now: float | None = None) -> bool:
        if self.offline or self.last_heartbeat is None:
            return False
        now = time.time() if now is None else now
        return now < self.last_heartbeat + self.freq * EXPIRE_WINDOW / 100

    def heartbeat_age(self, now: float | None = None) -> float | None:
        if self.last_heartbeat is None:
            return None
        return (time.time() if now is None else now) - self.last_heartbeat


@dataclass
class TaskState:
    uuid: str
    name: str | None = None
    state: str = states.PENDING
    worker: str | None = None
    args: str | None = None
    kwargs: str | None = None
    result: str | None = None
    exception: str | None = None
    traceback: str | None = None
    runtime: float | None = None
    retries: int = 0
    #: when the latest event was sent (this machine's clock)
    timestamp: float = 0.0
    #: when each state was reached, by event type (``task-received``: timestamp)
    times: dict[str, float] = field(default_factory=dict)


class State:
    """Workers and the last ``max_tasks`` tasks seen in events (module docstring)."""

    def __init__(self, max_tasks: int = 10000) -> None:
        self.max_tasks = max_tasks
        self.workers: dict[str, WorkerState] = {}
        self.tasks: OrderedDict[str, TaskState] = OrderedDict()
        self.event_count = 0

    def event(self, event: Event) -> None:
        self.event_count += 1
        kind = str(event.get("type", ""))
        if kind.startswith("worker-"):
            self._worker_event(kind, event)
        elif kind in TASK_STATES and event.get("uuid"):
            self._task_event(kind, event)

    def _worker_event(self, kind: str, event: Event) -> None:
        host = str(event.get("hostname", ""))
        worker = self.workers.get(host)
        if worker is None:
            worker = self.workers[host] = WorkerState(host)
        for name in ("pid", "freq", "active", "processed", "loadavg", "sw_ident", "sw_ver"):
            if name in event:
                setattr(worker, name, event[name])
        worker.sw_sys = str(event.get("sw_sys", worker.sw_sys))
        worker.offline = kind == "worker-offline"
        if not worker.offline:
            worker.last_heartbeat = float(event.get("timestamp") or time.time())

    def _task_event(self, kind: str, event: Event) -> None:
        uuid = str(event["uuid"])
        task = self.tasks.get(uuid)
        if task is None:
            task = self.tasks[uuid] = TaskState(uuid)
            while len(self.tasks) > self.max_tasks:
                self.tasks.popitem(last=False)
        new = TASK_STATES[kind]
        ts = float(event.get("timestamp") or time.time())
        task.times[kind] = ts
        if not (task.state in FINISHED and new not in FINISHED):
            task.state = new
            task.timestamp = ts
        if kind != "task-sent":
            task.worker = str(event.get("hostname") or task.worker or "")
        fields: dict[str, Any] = {
            "name": "name",
            "args": "args",
            "kwargs": "kwargs",
            "result": "result",
            "exception": "exception",
            "traceback": "traceback",
            "runtime": "runtime",
            "retries": "retries",
        }
        for key, attr in fields.items():
            if event.get(key) is not None:
                setattr(task, attr, event[key])

    def alive_workers(self, now: float | None = None) -> list[WorkerState]:
        return [w for w in self.workers.values() if w.alive(now)]

    def recent_tasks(self, limit: int = 20) -> list[TaskState]:
        """The ``limit`` tasks whose latest event is newest, newest first."""
        return sorted(self.tasks.values(), key=lambda t: t.timestamp, reverse=True)[:limit]
