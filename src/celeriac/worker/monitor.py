"""A worker's HTTP side: Prometheus ``/metrics`` on ``worker_metrics_port`` and the
``/livez`` and ``/readyz`` probes on ``worker_health_port`` (one server when they match).

Started by the process that owns the worker (the supervisor of a prefork worker, the worker
itself otherwise) and stopped with it. It reaches the broker on connections of its own, so a
probe or a scrape never waits behind the worker's own traffic, nor it behind them.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from celeriac.connections import Connections
from celeriac.health.pulse import LockWatch, Pulse
from celeriac.health.readiness import BrokerProbe
from celeriac.health.server import Answer, HttpServer, Route, text
from celeriac.transports import transport_class

if TYPE_CHECKING:
    from celeriac.brokers.base import Broker
    from celeriac.metrics.multiprocess import MultiprocessDir
    from celeriac.worker.worker import Worker

logger = logging.getLogger("celeriac.worker")


class Monitor:
    def __init__(
        self,
        worker: Worker,
        *,
        pulse: Pulse,
        consuming: Callable[[], bool],
        active: Callable[[], int],
        supervised: bool,
    ) -> None:
        app = self.app = worker.app
        conf = app.conf
        self.worker, self.pulse, self.consuming = worker, pulse, consuming
        self.stale_after = conf.worker_liveness_timeout
        self.servers: list[HttpServer] = []
        self.watch: LockWatch | None = None
        self.multiprocess: MultiprocessDir | None = None
        self._own = Connections(conf, lambda: app.topology)
        shared = transport_class(conf.broker_url).shared_between_processes
        # memory:// lives in this process only: a second set of connections would be another
        # broker.
        self._connections = self._own if shared else app.connections
        queue = worker.queues[0]
        self.probe = BrokerProbe(lambda: self.broker().depth(queue))
        self._routes: dict[int, dict[str, Route]] = {}
        if conf.worker_metrics_port is not None:
            self._routes.setdefault(conf.worker_metrics_port, {})["/metrics"] = self._metrics_route(
                worker, active, supervised
            )
        if conf.worker_health_port is not None:
            routes = self._routes.setdefault(conf.worker_health_port, {})
            routes["/livez"] = self.livez
            routes["/readyz"] = self.readyz

    def broker(self) -> Broker:
        return self._connections.broker

    def _metrics_route(self, worker: Worker, active: Callable[[], int], supervised: bool) -> Route:
        from celeriac.metrics.worker import WorkerView, exposition, worker_registry

        view = WorkerView(worker.hostname, tuple(worker.queues), self.ready, active, self.broker)
        sources: list[Callable[[Any], None]] = []
        if supervised:
            from celeriac.metrics.multiprocess import MultiprocessDir

            self.multiprocess = MultiprocessDir()  # before the first child is forked
            sources.append(self.multiprocess.collector_into)
        else:
            consumer = worker.consumer
            # The consumer counts its outcomes once started (after this): read it then.
            sources.append(lambda registry: registry.register(_Later(lambda: consumer.metrics)))
        registry = worker_registry(view, *sources)

        def metrics() -> Answer:
            body, ctype = exposition(registry)
            return 200, body, ctype

        return metrics

    # -- probes ----------------------------------------------------------------------------------
    def ready(self) -> bool:
        return self.consuming() and self.probe.ok

    def livez(self) -> Answer:
        age = self.pulse.age()
        if age > self.stale_after:
            return text(503, f"wedged: the worker's loop last turned {age:.1f}s ago")
        return text(200, f"alive: the worker's loop turned {age:.1f}s ago")

    def readyz(self) -> Answer:
        if not self.consuming():
            return text(503, "not ready: not consuming")
        if not self.probe.ok:
            return text(503, f"not ready: broker: {self.probe.error}")
        return text(200, "ready")

    # -- lifecycle -------------------------------------------------------------------------------
    def start(self, watch_lock: Any | None = None) -> None:
        """Serve; with ``watch_lock``, a :class:`LockWatch` bumps the pulse (see pulse.py).

        One probe and one scrape run first, on this thread: whatever they import is imported
        before any of this monitor's threads runs. A prefork supervisor forks children while
        they run, and a child forked while another thread imports a module waits forever for
        that module's import lock.
        """
        self.probe.probe_once()
        for routes in self._routes.values():
            if "/metrics" in routes:
                routes["/metrics"]()
        if watch_lock is not None:
            self.watch = LockWatch(self.pulse, watch_lock)
            self.watch.start()
        self.probe.start()
        host = self.app.conf.worker_http_host
        for port, routes in self._routes.items():
            server = HttpServer(host, port, routes)
            server.start()
            self.servers.append(server)
            logger.warning(
                "%s serving %s on http://%s:%d",
                self.worker.hostname,
                " ".join(sorted(routes)),
                host,
                server.port,
            )

    def stop(self) -> None:
        for server in self.servers:
            server.stop()
        self.probe.stop()
        if self.watch is not None:
            self.watch.stop()
        self._own.close()
        if self.multiprocess is not None:
            self.multiprocess.close()


class _Later:
    """A collector that forwards to a registry known only later (or never: nothing)."""

    def __init__(self, get: Callable[[], Any]) -> None:
        self.get = get

    def collect(self) -> Any:
        metrics = self.get()
        return [] if metrics is None else metrics.registry.collect()


def monitor_for(
    worker: Worker,
    *,
    pulse: Pulse,
    consuming: Callable[[], bool],
    active: Callable[[], int],
    supervised: bool,
) -> Monitor | None:
    """The worker's monitor when it serves metrics or health (the settings), else None."""
    conf = worker.app.conf
    if conf.worker_metrics_port is None and conf.worker_health_port is None:
        return None
    return Monitor(worker, pulse=pulse, consuming=consuming, active=active, supervised=supervised)
