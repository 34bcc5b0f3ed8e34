"""One test's broker, result backend, ledger and real ``celeriac worker`` processes.

:class:`Cluster` is the same for the three brokers; what differs is in :func:`make_cluster`:

* ``sqlite``: a broker file in the test's directory (it is also the result store);
* ``redis``: the shared Redis under a key prefix of the test's own (deleted afterwards), or a
  private ``redis-server`` (:class:`~tests.redis_support.PrivateRedis`) for scenarios that
  stop it;
* ``amqp``: the session's private vhost on the shared RabbitMQ, with queue names of the test's
  own (``task_default_queue``, dead-letter queue; deleted afterwards, the vhost at the end of the
  session), or a private node (:class:`~tests.faults.servers.PrivateRabbit`); results in Redis
  under the test's prefix, so every cell reads states the same way.

Workers may reach the broker through a :class:`~tests.faults.proxy.FaultProxy`
(``via_proxy=True``) while the test's own client talks to it directly.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from tests.faults.ledger import Ledger
from tests.faults.proxy import FaultProxy

ROOT = Path(__file__).resolve().parents[2]
_PRISTINE: dict[str, dict[str, Any]] = {}
BROKERS = ("sqlite", "redis", "amqp")


def wait_for(check: Callable[[], object], timeout: float, what: str, every: float = 0.05) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(every)


def await_(check: Callable[[], object], timeout: float) -> bool:
    """Wait up to ``timeout`` s for ``check()``; False if it never held (the test then counts
    and reports what it sees before asserting)."""
    try:
        wait_for(check, timeout, "")
    except AssertionError:
        return False
    return True


def children_of(pid: int) -> list[int]:
    out = subprocess.run(["ps", "-o", "pid=", "--ppid", str(pid)], capture_output=True, text=True)
    return [int(x) for x in out.stdout.split()]


def rss_kb(pid: int) -> int:
    """Resident memory of one process, in KiB (0 if it is gone)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


@dataclass
class Worker:
    name: str
    proc: subprocess.Popen[bytes]
    log_path: Path
    kind: str = "celeriac"

    @property
    def pid(self) -> int:
        return self.proc.pid

    def children(self) -> list[int]:
        return children_of(self.proc.pid)

    def alive(self) -> bool:
        return self.proc.poll() is None

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


@dataclass
class Cluster:
    broker: str
    tmp: Path
    url: str  # the broker, as the test's client reaches it
    backend_url: str | None
    conf: dict[str, Any]  # settings for workers and client (broker_url aside)
    worker_url: str = ""  # the broker, as workers reach it (through the proxy or not)
    proxy: FaultProxy | None = None
    cleanups: list[Callable[[], None]] = field(default_factory=list)
    workers: list[Worker] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.ledger = Ledger(self.tmp / "ledger.sqlite3")
        self.ledger.conn  # noqa: B018 - creates the file and table before any worker writes
        self.worker_url = self.worker_url or self.url
        self._app: Any = None

    # -- the client side -------------------------------------------------------------------------
    @property
    def app(self) -> Any:
        """The recording tasks' app in this process, configured as the test's client."""
        if self._app is None:
            import copy

            from tests.faults import fault_tasks

            app = fault_tasks.app
            app.close()
            # Each test starts from the module's own settings, not the last test's.
            self._original = copy.deepcopy(_PRISTINE.setdefault("conf", app.conf.as_dict()))
            app.conf.update(**{**self._original, **self.client_conf()})
            self._app = app
        return self._app

    @property
    def tasks(self) -> Any:
        self.app  # noqa: B018
        from tests.faults import fault_tasks

        return fault_tasks

    def client_conf(self) -> dict[str, Any]:
        return {**self.conf, "broker_url": self.url, "result_backend": self.backend_url}

    def reconfigure(self, **conf: Any) -> None:
        """Change settings for the client and for workers started from now on."""
        self.conf.update(conf)
        if self._app is not None:
            self._app.close()
            self._app.conf.update(**{**self._original, **self.client_conf()})

    def states(self, ids: Iterable[str]) -> dict[str, str]:
        return dict(self.app.backend.get_states(list(ids)))

    def dead_letters(self) -> list[Any]:
        return list(self.app.broker.dead_letters(1000))

    def depth(self) -> int:
        return int(self.app.broker.depth(self.conf.get("task_default_queue", "celery")))

    # -- workers ---------------------------------------------------------------------------------
    def worker_env(self, **extra: str) -> dict[str, str]:
        conf = {**self.conf, "broker_url": self.worker_url, "result_backend": self.backend_url}
        return {
            **os.environ,
            **self.env,
            "FAULT_CONF": json.dumps(conf),
            "FAULT_LEDGER": str(self.ledger.path),
            "FAULT_PROXY_CONTROL": str(self.proxy.control_port if self.proxy else ""),
            "PYTHONPATH": f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}",
            **extra,
        }

    def start_worker(
        self,
        *args: str,
        concurrency: int = 2,
        pool: str = "prefork",
        name: str | None = None,
        env: dict[str, str] | None = None,
        wait: bool = True,
    ) -> Worker:
        name = name or f"w{len(self.workers) + 1}"
        argv = [sys.executable, "-m", "celeriac", "-A", "tests.faults.fault_tasks:app", "worker"]
        argv += ["-l", "info", "-n", f"{name}@faults", "-P", pool, "-c", str(concurrency), *args]
        return self._spawn(name, argv, b" ready:", env or {}, wait)

    def start_celery_worker(
        self, name: str = "celery", env: dict[str, str] | None = None
    ) -> Worker:
        """A stock Celery 5 worker (solo pool) on the same queues and ledger."""
        # kombu takes the key prefix as a transport option, not in the URL
        backend, _, query = (self.backend_url or "").partition("?global_keyprefix=")
        conf: dict[str, Any] = {"broker_url": self.worker_url, "backend": backend or None}
        conf["task_default_queue"] = self.conf.get("task_default_queue", "celery")
        if query:
            conf["result_backend_transport_options"] = {"global_keyprefix": query}
        if self.broker == "redis":
            prefix = self.conf.get("broker_transport_options", {}).get("global_keyprefix", "")
            conf["broker_transport_options"] = {
                "global_keyprefix": prefix,
                "visibility_timeout": self.conf["broker_transport_options"]["visibility_timeout"],
                "unacked_restore_interval": 1,
                "unacked_restore_throttle": 1,
            }
        argv = [sys.executable, "-m", "celery", "-A", "tests.faults.celery_fault_tasks", "worker"]
        argv += ["-P", "solo", "-l", "info", "-n", f"{name}@faults", "--without-mingle"]
        argv += ["--without-gossip", "--without-heartbeat", "-Q", conf["task_default_queue"]]
        extra = {"FAULT_CELERY_CONF": json.dumps(conf), **(env or {})}
        return self._spawn(name, argv, b" ready.", extra, True, kind="celery")

    def _spawn(
        self,
        name: str,
        argv: list[str],
        ready: bytes,
        env: dict[str, str],
        wait: bool,
        kind: str = "celeriac",
    ) -> Worker:
        log_path = self.tmp / f"{name}.log"
        with open(log_path, "wb") as log:
            proc = subprocess.Popen(
                argv, env=self.worker_env(**env), stdout=log, stderr=subprocess.STDOUT, cwd=self.tmp
            )
        worker = Worker(name, proc, log_path, kind)
        self.workers.append(worker)
        if wait:
            wait_for(
                lambda: ready in log_path.read_bytes() or proc.poll() is not None,
                40,
                f"worker {name} to start",
            )
            assert proc.poll() is None, worker.log()
            if kind == "celeriac" and "-P" in argv and argv[argv.index("-P") + 1] == "prefork":
                size = int(argv[argv.index("-c") + 1])
                wait_for(lambda: len(worker.children()) >= size, 20, f"{name}'s children")
        return worker

    def kill(self, worker: Worker) -> float:
        """SIGKILL a worker's whole process tree at once; returns when it happened."""
        pids = [*worker.children(), worker.pid]
        at = time.time()
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        worker.proc.wait(10)
        return at

    def kill_running(self, task_id: str) -> int:
        """SIGKILL the process running ``task_id`` (as its run's ledger row says)."""
        pid = wait_for(lambda: self.ledger.running().get(task_id), 30, f"{task_id} to start")
        os.kill(pid, signal.SIGKILL)
        return int(pid)

    def stop(self, worker: Worker, timeout: float = 60) -> int:
        """A warm shutdown (SIGTERM); returns the exit code."""
        if worker.alive():
            worker.proc.send_signal(signal.SIGTERM)
        return worker.proc.wait(timeout)

    def close(self) -> None:
        for worker in self.workers:
            if worker.alive():
                with contextlib.suppress(Exception):
                    self.kill(worker)
        if self._app is not None:
            with contextlib.suppress(Exception):
                self._app.close()
            self._app = None
        if self.proxy is not None:
            self.proxy.close()
        for cleanup in reversed(self.cleanups):
            with contextlib.suppress(Exception):
                cleanup()
        self.ledger.close()

    # -- counting --------------------------------------------------------------------------------
    def tally(self, ids: Iterable[str]) -> tuple[int, int, dict[str, int]]:
        """(lost, duplicated, {id: completed runs}) over ``ids``: lost = no completed run,
        duplicated = ids with more than one."""
        done = self.ledger.completed()
        counts = {tid: done.get(tid, 0) for tid in ids}
        lost = sum(1 for n in counts.values() if n == 0)
        dups = sum(1 for n in counts.values() if n > 1)
        return lost, dups, counts

    def all_done(self, ids: Iterable[str]) -> bool:
        done = self.ledger.completed()
        return all(done.get(tid, 0) >= 1 for tid in ids)


class Producer:
    """Publishes ``rec`` tasks from a thread until stopped: what returned, what raised."""

    def __init__(self, c: Cluster, rate: float = 200.0, seconds: float = 0.0) -> None:
        self.c, self.pause, self.seconds = c, 1.0 / rate, seconds
        self.sent: list[str] = []
        self.failed = 0
        self.stopped = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        task = self.c.tasks.rec
        while not self.stopped.is_set():
            try:
                self.sent.append(task.delay(self.seconds).id)
            except Exception:
                self.failed += 1
            time.sleep(self.pause)

    def stop(self) -> None:
        self.stopped.set()
        self.thread.join(60)
        assert not self.thread.is_alive(), "a publish hung"


def amqp_delete_queues(url: str, names: Iterable[str]) -> None:
    """Delete queues with a py-amqp connection of our own."""
    import amqp

    parts = urlsplit(url)
    vhost = parts.path[1:] or "/"
    from urllib.parse import unquote

    conn = amqp.Connection(
        host=f"{parts.hostname}:{parts.port or 5672}",
        userid=parts.username or "guest",
        password=parts.password or "guest",
        virtual_host=unquote(vhost),
    )
    conn.connect()
    try:
        ch = conn.channel()
        for name in names:
            with contextlib.suppress(Exception):
                ch.queue_delete(name)
    finally:
        with contextlib.suppress(Exception):
            conn.close()


def new_name() -> str:
    return f"faults-{uuid.uuid4().hex[:10]}"
