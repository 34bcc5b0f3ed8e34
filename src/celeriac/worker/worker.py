"""The worker's lifecycle: start pool and consumer, shut down warm on the first signal, cold on
the second."""

from __future__ import annotations

import logging
import os
import signal
import socket
import threading
from collections.abc import Callable
from types import FrameType
from typing import TYPE_CHECKING

from celeriac import signals
from celeriac.exceptions import ConfigurationError
from celeriac.transports import broker_transport_class
from celeriac.worker.activity import Activity
from celeriac.worker.autoscale import Autoscaler, Bounds, check_pool
from celeriac.worker.banner import announce
from celeriac.worker.consumer import Consumer
from celeriac.worker.events import Heart, start_heart
from celeriac.worker.pools import pool_class
from celeriac.worker.revoked import Revoked

if TYPE_CHECKING:
    from celeriac.app import Celeriac
    from celeriac.worker.job import Outcome
    from celeriac.worker.monitor import Monitor
    from celeriac.worker.pools.base import Pool
    from celeriac.worker.remote import RemoteControl
    from celeriac.worker.supervisor import Supervisor

logger = logging.getLogger("celeriac.worker")


class Worker:
    """Consume ``queues`` and run their tasks with ``concurrency`` slots of ``pool``.

    ``Worker(app).start()`` blocks until a signal (or :meth:`stop`) ends it.

    With the prefork pool this process only supervises: each of ``concurrency`` child
    processes is a worker of its own (connection, fetcher, finisher) running one task at a
    time, so the broker I/O of N children runs in N processes instead of funnelling through this
    one. Only a broker that lives in this process (``memory://``), which children cannot reach,
    keeps the consuming here and pipes each task to a child.
    """

    def __init__(
        self,
        app: Celeriac,
        *,
        queues: list[str] | None = None,
        concurrency: int | None = None,
        pool: str | Callable[..., Pool] | None = None,
        hostname: str | None = None,
        prefetch_multiplier: int | None = None,
        max_tasks_per_child: int | None = None,
        max_memory_per_child: int | None = None,
        install_signal_handlers: bool = True,
        announce: bool = True,
        heartbeat: bool | None = None,
        autoscale: tuple[int, int] | None = None,
    ) -> None:
        conf = app.conf
        self.app = app
        # As Celery: without queues given, every queue of task_queues (else the default one).
        self.queues = queues or list(app.topology.queues) or [conf.task_default_queue]
        self.concurrency = concurrency or conf.worker_concurrency or os.cpu_count() or 1
        self._pool_factory = None if isinstance(pool, str) else pool
        self.pool_name = pool if isinstance(pool, str) else conf.worker_pool
        if self._pool_factory is not None:
            self.pool_name = getattr(self._pool_factory, "__name__", "custom")
        if self.pool_name == "solo" and self.concurrency != 1:
            # Solo runs one task at a time: more slots would only lease messages it cannot run.
            if concurrency:
                logger.warning("the solo pool runs one task at a time; -c %d ignored", concurrency)
            self.concurrency = 1
        #: ``--autoscale MAX,MIN`` (``autoscale.py``): the pool starts at MIN
        self.autoscale: Bounds | None = None
        self.autoscaler: Autoscaler | None = None
        if autoscale is not None:
            check_pool(self.pool_name)
            self.autoscale = Bounds(*autoscale, keepalive=conf.worker_autoscale_keepalive)
            self.concurrency = self.autoscale.min
        self.hostname = hostname or conf.worker_hostname or f"celeriac@{socket.gethostname()}"
        fair_after = conf.worker_fair_after
        multiplier = max(1, prefetch_multiplier or conf.worker_prefetch_multiplier)
        if fair_after is not None and fair_after <= 0:
            multiplier = 1  # lease only what runs: nothing ever waits behind a task
        self.prefetch = max(1, self.concurrency * multiplier)
        # Leasing only for free slots (a multiplier of 1) refills one slot at a time; beyond
        # that, in batches of half the prefetch, where one fetch serves several tasks.
        refill = 1 if multiplier == 1 else self.prefetch // 2
        self.max_tasks_per_child = max_tasks_per_child or conf.worker_max_tasks_per_child
        self.max_memory_per_child = max_memory_per_child or conf.worker_max_memory_per_child
        self.install_signal_handlers = install_signal_handlers
        #: Log ready/stopped at WARNING (a supervised child announces nothing of its own).
        self.announce = announce
        #: Send worker-online/heartbeat/offline (default: when task events are on; the
        #: ``celeriac worker`` command, like Celery's, unless ``--without-heartbeat``).
        self.heartbeat = conf.worker_send_task_events if heartbeat is None else heartbeat
        self._heart: Heart | None = None
        self.consumer = Consumer(
            app,
            self.queues,
            prefetch=self.prefetch,
            hostname=self.hostname,
            refill=refill,
            fair_after=fair_after,
            # Leasing beyond the slots, with what waits behind a long task given back: the
            # window may grow for short tasks (fixed with a multiplier of 1). Not for asyncio's
            # slots, which are coroutines by the hundred waiting on I/O.
            slots=self.concurrency
            if multiplier > 1 and fair_after is not None and self.pool_name != "asyncio"
            else 0,
            growth=conf.worker_prefetch_growth,
        )
        self.pool: Pool | None = None
        self._stopped = threading.Event()
        #: Set once the worker consumes; wait on it before sending work in tests.
        self.ready = threading.Event()
        self._stop_once = threading.Lock()
        self._stopping = False
        self._supervisor: Supervisor | None = None
        #: task ids revoked by broadcast; what the consumer works on (remote control)
        self.revoked = Revoked()
        self.activity = Activity(self.hostname)
        self._remote: RemoteControl | None = None
        self._monitor: Monitor | None = None

    def start(self) -> None:
        if self._supervised():
            from celeriac.worker.supervisor import Supervisor

            self._supervisor = Supervisor(self)
            self._supervisor.run()
            return
        self._boot()
        assert self.pool is not None
        self.pool.serve()
        self._stopped.wait()

    def _supervised(self) -> bool:
        """Prefork with consuming children (see the class docstring)?"""
        if self.pool_name != "prefork" or self._pool_factory is not None:
            return False
        # Checked on the class: opening a connection here would leak it into every child.
        return self._broker_shared()

    def _broker_shared(self) -> bool:
        """Can other processes reach the broker (every one but ``memory://``)?"""
        return broker_transport_class(self.app.conf.broker_url).shared_between_processes

    def _boot(self) -> None:
        app = self.app
        if self.install_signal_handlers:
            # First thing: a SIGTERM during start-up must still mean a warm shutdown.
            signal.signal(signal.SIGTERM, self._on_signal)
            signal.signal(signal.SIGINT, self._on_signal)
        app.import_modules()
        if not self._broker_shared() and self.pool_name == "prefork":  # refuses memcached://
            # Prefork children run tasks; tasks that send tasks need a broker they can reach.
            logger.warning(
                "the %s broker lives in this process only; child processes cannot "
                "send tasks through it",
                app.conf.broker_url,
            )
        factory = self._pool_factory or pool_class(self.pool_name)
        if self.concurrency < 1:
            raise ConfigurationError("concurrency must be at least 1")
        if self.autoscale is not None and not hasattr(factory, "resize"):
            raise ConfigurationError(f"--autoscale: this {self.pool_name} pool cannot resize")
        self.pool = factory(
            app,
            self.concurrency,
            self.consumer.on_outcome,
            max_tasks_per_child=self.max_tasks_per_child,
            max_memory_per_child=self.max_memory_per_child,
        )
        self.pool.on_retire = lambda: threading.Thread(target=self.stop, daemon=True).start()
        self.pool.on_abandon = self._abandon
        self.pool.start()
        self.consumer.start(self.pool)
        assert self.consumer.fetcher is not None
        self.consumer.fetcher.revoked = self.pool.revoked_ids = self.revoked
        self.activity.attach(self.pool, self.consumer.inflight)
        if self.autoscale is not None:
            from celeriac.worker.autoscale import local_autoscaler

            self.autoscaler = local_autoscaler(self, self.autoscale)
        if self.announce:  # a prefork child leaves remote control to its supervisor
            self.start_remote_control()
            self._start_monitor()
        self.ready.set()
        if self._stopping:  # a signal came while starting
            threading.Thread(target=self.stop, daemon=True).start()
        if not self.announce:
            return
        if self.heartbeat:
            consumer = self.consumer
            self._heart = start_heart(
                app, self.hostname, lambda: (consumer.inflight.unfinished, consumer.processed)
            )
        signals.worker_ready.send(self)
        announce(
            app, self.hostname, self.queues, self.pool_name, self.concurrency, str(self.prefetch)
        )

    def _start_monitor(self) -> None:
        """/metrics, /livez and /readyz when their ports are set (``worker/monitor.py``)."""
        from celeriac.health.pulse import Pulse
        from celeriac.worker.monitor import monitor_for

        consumer = self.consumer
        self._monitor = monitor_for(
            self,
            pulse=Pulse(),
            consuming=lambda: self.ready.is_set() and not self._stopping,
            active=lambda: consumer.inflight.unfinished,
            supervised=False,
        )
        if self._monitor is not None:
            self._monitor.start(watch_lock=consumer.inflight.cond)

    def start_remote_control(self) -> None:
        """Answer remote control as this node (``worker_enable_remote_control``)."""
        if not self.app.conf.worker_enable_remote_control:
            return
        from celeriac.worker.remote import RemoteControl
        from celeriac.worker.remote_views import LocalView, SupervisorView

        view = (
            SupervisorView(self, self._supervisor)
            if self._supervisor is not None
            else LocalView(self)
        )
        self._remote = RemoteControl(view)
        self._remote.start()

    def stop_remote_control(self) -> None:
        remote, self._remote = self._remote, None
        if remote is not None:
            remote.stop()

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        if self._stopping:
            logger.warning(
                "second signal: cold shutdown (running tasks are abandoned and come "
                "back when their leases expire)"
            )
            threading.Thread(target=self.stop, kwargs={"cold": True}, daemon=True).start()
            return
        self._stopping = True
        logger.warning(
            "warm shutdown: finishing running tasks (send the signal again to stop at once)"
        )
        if self.ready.is_set():  # otherwise start() stops as soon as it is up
            threading.Thread(target=self.stop, daemon=True).start()

    def stop_soon(self) -> None:
        """A warm stop from a signal handler (idempotent; the work happens on a thread)."""
        if not self._stopping:
            self._stopping = True
            if self.ready.is_set():
                threading.Thread(target=self.stop, daemon=True).start()

    def stop(self, *, cold: bool = False) -> None:
        """Stop the worker: warm lets running tasks finish; cold abandons them."""
        self._stopping = True
        if self._supervisor is not None:
            self._supervisor.stop(cold=cold)
            return
        if not self.ready.is_set():  # never started: nothing to drain
            self._stopped.set()
            return
        if not cold and not self._stop_once.acquire(blocking=False):
            return  # a warm stop is already under way
        if self.announce:
            signals.worker_shutdown.send(self)
        try:
            if cold:
                assert self.pool is not None
                self.pool.stop(cold=True)
                self.stop_remote_control()
                self.app.close()
                os._exit(1)
            if self.autoscaler is not None:
                self.autoscaler.stop()
            waiting = self.consumer.stop_fetching()
            assert self.pool is not None
            unstarted = waiting + self.pool.stop(cold=False)
            self.consumer.return_unstarted(unstarted)
            self.consumer.drain(timeout=None)
            self.stop_remote_control()
            if self._heart is not None:
                self._heart.stop()
            if self._monitor is not None:
                self._monitor.stop()
            self.app.close()
            logger.log(
                logging.WARNING if self.announce else logging.INFO,
                "%s stopped after %d task(s)",
                self.hostname,
                self.consumer.processed,
            )
        finally:
            self._stopped.set()

    def _abandon(self, outcome: Outcome) -> None:
        """A running task that cannot be stopped in place is about to end this process:
        apply its ``outcome`` and hand back every message not started yet."""
        assert self.pool is not None
        self.consumer.on_outcome(outcome)
        waiting = self.consumer.stop_fetching()
        self.consumer.return_unstarted(waiting + self.pool.take_queued())
        self.consumer.drain(timeout=10.0)
        self.app.close()
