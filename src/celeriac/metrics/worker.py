"""What a worker's ``/metrics`` reads at scrape time, beside the task counts.

* ``celeriac_worker_up{hostname}``: 1 while the worker consumes (it is ready), 0 otherwise;
* ``celeriac_worker_tasks_active{hostname}``: tasks running or held right now;
* ``celeriac_queue_depth{queue}``: messages on each queue the worker consumes (ready, delayed
  or leased, as :meth:`Broker.depth` counts them);
* ``celeriac_queue_oldest_age_seconds{queue}``: how long the oldest ready message has waited,
  only where the broker can tell without consuming (:meth:`Broker.oldest_age`: SQLite).

A broker that does not answer leaves its queue samples out of that scrape (logged).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from celeriac.exceptions import CeleriacError
from celeriac.metrics import METRIC_PREFIX
from celeriac.metrics._client import prometheus

if TYPE_CHECKING:
    from celeriac.brokers.base import Broker

logger = logging.getLogger("celeriac.metrics")


@dataclass(frozen=True)
class WorkerView:
    """What the collector reads of a worker, as callables (the worker's shape varies)."""

    hostname: str
    queues: Sequence[str]
    ready: Callable[[], bool]
    active: Callable[[], int]
    broker: Callable[[], Broker]


class WorkerCollector:
    """A prometheus-client collector of :class:`WorkerView`'s live values."""

    def __init__(self, view: WorkerView) -> None:
        self.view = view

    def describe(self) -> list[Any]:
        return []  # the families depend on the queues; nothing to check ahead

    def collect(self) -> Iterator[Any]:
        from prometheus_client.core import GaugeMetricFamily

        view = self.view
        up = GaugeMetricFamily(
            f"{METRIC_PREFIX}_worker_up", "1 while the worker consumes.", labels=["hostname"]
        )
        up.add_metric([view.hostname], 1.0 if view.ready() else 0.0)
        yield up
        active = GaugeMetricFamily(
            f"{METRIC_PREFIX}_worker_tasks_active",
            "Tasks the worker is running or holding now.",
            labels=["hostname"],
        )
        active.add_metric([view.hostname], float(view.active()))
        yield active
        depth = GaugeMetricFamily(
            f"{METRIC_PREFIX}_queue_depth",
            "Messages on the queue: ready, delayed or leased.",
            labels=["queue"],
        )
        age = GaugeMetricFamily(
            f"{METRIC_PREFIX}_queue_oldest_age_seconds",
            "Seconds the oldest ready message has waited (brokers that can tell).",
            labels=["queue"],
        )
        for queue, count, oldest in self._queues():
            depth.add_metric([queue], float(count))
            if oldest is not None:
                age.add_metric([queue], oldest)
        yield depth
        yield age

    def _queues(self) -> list[tuple[str, int, float | None]]:
        out = []
        try:
            broker = self.view.broker()
            for queue in self.view.queues:
                out.append((queue, broker.depth(queue), broker.oldest_age(queue)))
        except (CeleriacError, OSError) as exc:
            logger.warning("metrics: queue depths not read this time: %s", exc)
        return out


def worker_registry(view: WorkerView, *sources: Any) -> Any:
    """A registry with the live collector plus ``sources`` (callables that register theirs)."""
    registry = prometheus().CollectorRegistry(auto_describe=False)
    registry.register(WorkerCollector(view))
    for add in sources:
        add(registry)
    return registry


def exposition(registry: Any) -> tuple[bytes, str]:
    """The text exposition of ``registry`` and its content type."""
    client = prometheus()
    return client.generate_latest(registry), client.CONTENT_TYPE_LATEST
