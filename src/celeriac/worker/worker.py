"""The worker's lifecycle: start pool and consumer, shut down warm on the first signal, cold on
the second."""

from __future__ import annotations

import logging
import os
import signal
import socket
import threading
from types import FrameType
from typing import TYPE_CHECKING

from celeriac import signals
from celeriac.exceptions import ConfigurationError
from celeriac.worker.consumer import Consumer
from celeriac.worker.pools import pool_class

if TYPE_CHECKING:
    from celeriac.app import Celeriac
    from celeriac.worker.pools.base import Pool

logger = logging.getLogger("celeriac.worker")


class Worker:
    """Consume ``queues`` and run their tasks with ``concurrency`` slots of ``pool``.

    ``Worker(app).start()`` blocks until a signal (or :meth:`stop`) ends it.
    """

    def __init__(
        self,
        app: Celeriac,
        *,
        queues: list[str] | None = None,
        concurrency: int | None = None,
        pool: str | None = None,
        hostname: str | None = None,
        prefetch_multiplier: int | None = None,
        max_tasks_per_child: int | None = None,
        max_memory_per_child: int | None = None,
        install_signal_handlers: bool = True,
    ) -> None:
        conf = app.conf
        self.app = app
        self.queues = queues or [conf.task_default_queue]
        self.concurrency = concurrency or conf.worker_concurrency or os.cpu_count() or 1
        self.pool_name = pool or conf.worker_pool
        self.hostname = hostname or conf.worker_hostname or f"celeriac@{socket.gethostname()}"
        multiplier = prefetch_multiplier or conf.worker_prefetch_multiplier
        self.prefetch = max(1, self.concurrency * max(1, multiplier))
        self.max_tasks_per_child = max_tasks_per_child or conf.worker_max_tasks_per_child
        self.max_memory_per_child = max_memory_per_child or conf.worker_max_memory_per_child
        self.install_signal_handlers = install_signal_handlers
        self.consumer = Consumer(app, self.queues, prefetch=self.prefetch, hostname=self.hostname)
        self.pool: Pool | None = None
        self._stopped = threading.Event()
        #: Set once the worker consumes; wait on it before sending work in tests.
        self.ready = threading.Event()
        self._stop_once = threading.Lock()
        self._stopping = False

    def start(self) -> None:
        app = self.app
        if self.install_signal_handlers:
            # First thing: a SIGTERM during start-up must still mean a warm shutdown.
            signal.signal(signal.SIGTERM, self._on_signal)
            signal.signal(signal.SIGINT, self._on_signal)
        app.import_modules()
        if self.pool_name == "prefork" and not app.broker.shared_between_processes:
            # Prefork children run tasks; tasks that send tasks need a broker they can reach.
            logger.warning(
                "the %s broker lives in this process only; child processes cannot "
                "send tasks through it",
                app.conf.broker_url,
            )
        cls = pool_class(self.pool_name)
        if self.concurrency < 1:
            raise ConfigurationError("concurrency must be at least 1")
        self.pool = cls(
            app,
            self.concurrency,
            self.consumer.on_outcome,
            max_tasks_per_child=self.max_tasks_per_child,
            max_memory_per_child=self.max_memory_per_child,
        )
        self.pool.start()
        self.consumer.start(self.pool)
        self.ready.set()
        if self._stopping:  # a signal came while starting
            threading.Thread(target=self.stop, daemon=True).start()
        signals.worker_ready.send(self)
        logger.warning(
            "%s ready: queues=%s pool=%s concurrency=%d prefetch=%d broker=%s",
            self.hostname,
            ",".join(self.queues),
            self.pool_name,
            self.concurrency,
            self.prefetch,
            _redact(app.conf.broker_url),
        )
        self._stopped.wait()

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

    def stop(self, *, cold: bool = False) -> None:
        """Stop the worker: warm lets running tasks finish; cold abandons them."""
        self._stopping = True
        if not self.ready.is_set():  # never started: nothing to drain
            self._stopped.set()
            return
        if not cold and not self._stop_once.acquire(blocking=False):
            return  # a warm stop is already under way
        signals.worker_shutdown.send(self)
        try:
            if cold:
                assert self.pool is not None
                self.pool.stop(cold=True)
                self.app.close()
                os._exit(1)
            waiting = self.consumer.stop_fetching()
            assert self.pool is not None
            unstarted = waiting + self.pool.stop(cold=False)
            self.consumer.return_unstarted(unstarted)
            self.consumer.drain(timeout=None)
            self.app.close()
            logger.warning("%s stopped after %d task(s)", self.hostname, self.consumer.processed)
        finally:
            self._stopped.set()


def _redact(url: str) -> str:
    """A URL with its password replaced, for logs."""
    scheme, sep, rest = url.partition("://")
    if not sep or "@" not in rest:
        return url
    creds, _, host = rest.rpartition("@")
    user = creds.split(":", 1)[0]
    return f"{scheme}://{user}:***@{host}" if ":" in creds else url
