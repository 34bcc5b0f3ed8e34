"""Task metrics a consumer keeps as it applies outcomes.

One :class:`TaskMetrics` per consumer, made after any fork: in a prefork child its values go
to that child's file of the multiprocess directory (``multiprocess.py``), elsewhere to its own
registry, which the worker's ``/metrics`` serves.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from celeriac.metrics import METRIC_PREFIX
from celeriac.metrics._client import prometheus

if TYPE_CHECKING:
    from celeriac.app import Celeriac
    from celeriac.worker.job import Outcome

#: Runtime buckets (s): from a no-op task to a long batch job.
RUNTIME_BUCKETS = (
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
    60.0,
    300.0,
    1800.0,
)


def state_label(outcome: Outcome) -> str | None:
    """The ``state`` label of an outcome; None for one that ends nothing (a delayed ETA)."""
    if outcome.state:
        return outcome.state
    action = outcome.action.value
    return {
        "dead_letter": "REJECTED",
        "requeue": "REQUEUED",
        "ack": "IGNORED",
    }.get(action)


class TaskMetrics:
    """``celeriac_tasks_total{task, state}`` and ``celeriac_task_runtime_seconds{task}``."""

    def __init__(self) -> None:
        client = prometheus()
        self.registry: Any = client.CollectorRegistry(auto_describe=True)
        self.tasks = client.Counter(
            f"{METRIC_PREFIX}_tasks",
            "Tasks whose outcome this worker applied, by task name and final state.",
            ["task", "state"],
            registry=self.registry,
        )
        self.runtime = client.Histogram(
            f"{METRIC_PREFIX}_task_runtime_seconds",
            "How long tasks ran (the task's own code), by task name.",
            ["task"],
            buckets=RUNTIME_BUCKETS,
            registry=self.registry,
        )

    def observe(self, outcome: Outcome) -> None:
        state = state_label(outcome)
        if state is None:
            return
        name = outcome.task_name or "unknown"
        self.tasks.labels(name, state).inc()
        if outcome.runtime > 0:  # it ran (a refused or revoked message did not)
            self.runtime.labels(name).observe(outcome.runtime)


def task_metrics(app: Celeriac) -> TaskMetrics | None:
    """A consumer's metrics when the worker serves them (``worker_metrics_port``), else None."""
    return TaskMetrics() if app.conf.worker_metrics_port is not None else None
