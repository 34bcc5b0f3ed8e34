"""The task metrics computed from events, for a process that watches a cluster (the
dashboard's ``/metrics``): feed it every event, render it at each scrape.

>>> metrics = EventMetrics()                    # or EventMetrics(state) to share a State
>>> receiver = EventReceiver(app, {"*": metrics.event})
>>> body, content_type = metrics.render()

Counts are cumulative since this process started watching (events before that are not
seen); a task is counted once per finishing event (``task-succeeded``, ``task-failed``,
``task-retried``, ``task-revoked``, ``task-rejected``). Metric names are the worker's, with
the worker's name as a ``hostname`` label, so one query works on both.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from typing import Any

from celeriac.events.channel import Event
from celeriac.events.state import TASK_STATES, State
from celeriac.metrics import METRIC_PREFIX
from celeriac.metrics._client import prometheus
from celeriac.metrics.tasks import RUNTIME_BUCKETS

#: The events that end a run of a task, and so are counted.
COUNTED = frozenset(
    {"task-succeeded", "task-failed", "task-retried", "task-revoked", "task-rejected"}
)


class EventMetrics:
    """Task counts and runtimes from events, plus the workers the :class:`State` knows."""

    def __init__(self, state: State | None = None) -> None:
        client = prometheus()
        self.state = state if state is not None else State()
        self._feeds_state = state is None
        self._lock = threading.Lock()
        self.registry: Any = client.CollectorRegistry(auto_describe=False)
        self.tasks = client.Counter(
            f"{METRIC_PREFIX}_tasks",
            "Tasks finished, by task name, final state and worker (from events).",
            ["task", "state", "hostname"],
            registry=self.registry,
        )
        self.runtime = client.Histogram(
            f"{METRIC_PREFIX}_task_runtime_seconds",
            "How long tasks ran, by task name and worker (from events).",
            ["task", "hostname"],
            buckets=RUNTIME_BUCKETS,
            registry=self.registry,
        )
        self.registry.register(_Workers(self.state))

    def event(self, event: Event) -> None:
        """Count one event (and feed it to the :class:`State` this made for itself)."""
        with self._lock:
            if self._feeds_state:
                self.state.event(event)
            kind = str(event.get("type", ""))
            if kind not in COUNTED:
                return
            task = self.state.tasks.get(str(event.get("uuid", "")))
            name = (task.name if task is not None else None) or str(event.get("name") or "")
            host = str(event.get("hostname") or "")
            self.tasks.labels(name or "unknown", TASK_STATES[kind], host).inc()
            runtime = event.get("runtime")
            if kind in ("task-succeeded", "task-failed") and isinstance(runtime, (int, float)):
                self.runtime.labels(name or "unknown", host).observe(float(runtime))

    def events(self, batch: list[Event]) -> None:
        """Count a batch of events, in order."""
        for event in batch:
            self.event(event)

    def render(self) -> tuple[bytes, str]:
        """The text exposition and its content type, for an HTTP ``/metrics``."""
        client = prometheus()
        with self._lock:
            return client.generate_latest(self.registry), client.CONTENT_TYPE_LATEST


class _Workers:
    """``celeriac_worker_up``, ``..._tasks_active`` and ``..._heartbeat_age_seconds`` per
    worker the events have named."""

    def __init__(self, state: State) -> None:
        self.state = state

    def collect(self) -> Iterator[Any]:
        from prometheus_client.core import GaugeMetricFamily

        now = time.time()
        up = GaugeMetricFamily(
            f"{METRIC_PREFIX}_worker_up",
            "1 while the worker's heartbeats arrive.",
            labels=["hostname"],
        )
        active = GaugeMetricFamily(
            f"{METRIC_PREFIX}_worker_tasks_active",
            "Tasks the worker said it was running in its last heartbeat.",
            labels=["hostname"],
        )
        age = GaugeMetricFamily(
            f"{METRIC_PREFIX}_worker_heartbeat_age_seconds",
            "Seconds since the worker's last heartbeat.",
            labels=["hostname"],
        )
        for worker in list(self.state.workers.values()):
            alive = worker.alive(now)
            up.add_metric([worker.hostname], 1.0 if alive else 0.0)
            active.add_metric([worker.hostname], float(worker.active if alive else 0))
            seen = worker.heartbeat_age(now)
            if seen is not None:
                age.add_metric([worker.hostname], seen)
        yield up
        yield active
        yield age
