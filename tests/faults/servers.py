"""Broker servers a test owns, so it may stop and restart them: a private RabbitMQ node, and a
Redis replica for failover (a private redis-server is :class:`tests.redis_support.PrivateRedis`).

A RabbitMQ node of its own (node name, AMQP and distribution ports, data and log directories
in the test's temporary directory; the machine's ``epmd`` is shared, as every node's is).
Measured here (RabbitMQ 3.10, 2 cores): first start ~9 s, stop ~1.2 s, restart with its data
~6.5 s, so one restart scenario costs ~17 s; the suite starts a node only for the scenarios
that restart the broker (#4) and reaches the shared server through a :class:`FaultProxy` for
cuts and blackholes.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import time
import uuid
from pathlib import Path

from tests.redis_support import PrivateRedis, _answers, _free_port, _wait_until_up

RABBITMQ_SERVER = "/usr/lib/rabbitmq/bin/rabbitmq-server"


def rabbitmq_available() -> bool:
    return Path(RABBITMQ_SERVER).exists() or shutil.which("rabbitmq-server") is not None


class PrivateRabbit:
    """A RabbitMQ node in ``tmp``; :meth:`stop` and :meth:`start` again keep its data."""

    def __init__(self, tmp: Path) -> None:
        self.dir = tmp / "rabbit"
        self.dir.mkdir(exist_ok=True)
        self.port = _free_port()
        self.dist_port = _free_port()
        self.node = f"celeriac-faults-{uuid.uuid4().hex[:8]}@localhost"
        self.url = f"amqp://guest:guest@127.0.0.1:{self.port}//"
        self.proc: subprocess.Popen[bytes] | None = None
        (self.dir / "enabled_plugins").write_text("[].\n")
        (self.dir / "rabbitmq.conf").write_text("")

    def _env(self) -> dict[str, str]:
        return {
            **os.environ,
            "HOME": str(self.dir),  # its own Erlang cookie
            "RABBITMQ_NODENAME": self.node,
            "RABBITMQ_NODE_IP_ADDRESS": "127.0.0.1",
            "RABBITMQ_NODE_PORT": str(self.port),
            "RABBITMQ_DIST_PORT": str(self.dist_port),
            "RABBITMQ_MNESIA_BASE": str(self.dir / "mnesia"),
            "RABBITMQ_LOG_BASE": str(self.dir / "log"),
            "RABBITMQ_ENABLED_PLUGINS_FILE": str(self.dir / "enabled_plugins"),
            "RABBITMQ_CONFIG_FILE": str(self.dir / "rabbitmq"),
        }

    def start(self, timeout: float = 60) -> float:
        """Start (or restart) the node; returns the seconds it took to answer."""
        began = time.monotonic()
        exe = RABBITMQ_SERVER if Path(RABBITMQ_SERVER).exists() else "rabbitmq-server"
        with open(self.dir / "server.log", "ab") as log:
            self.proc = subprocess.Popen(
                [exe], env=self._env(), stdout=log, stderr=subprocess.STDOUT, start_new_session=True
            )
        while not _answers(self.port):
            if self.proc.poll() is not None or time.monotonic() - began > timeout:
                raise AssertionError(
                    f"RabbitMQ node did not start: {(self.dir / 'server.log').read_text()[-2000:]}"
                )
            time.sleep(0.1)
        return time.monotonic() - began

    def stop(self) -> None:
        """A clean stop (SIGTERM): persistent messages on durable queues survive it."""
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)
        deadline = time.monotonic() + 10
        while _answers(self.port) and time.monotonic() < deadline:
            time.sleep(0.05)


class ReplicaRedis(PrivateRedis):
    """A private redis-server replicating ``primary`` (asynchronously, as Redis does)."""

    def __init__(self, tmp: Path, primary: PrivateRedis) -> None:
        super().__init__(tmp)
        self.primary = primary

    def start(self) -> None:
        args = ["--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(self.dir)]
        args += ["--appendonly", "yes", "--save", "", "--replicaof", "127.0.0.1"]
        args += [str(self.primary.port)]
        self.procs.append(subprocess.Popen(["redis-server", *args], stdout=subprocess.DEVNULL))
        _wait_until_up(self.port)

    def promote(self) -> None:
        import redis

        client = redis.Redis(port=self.port)
        try:
            client.execute_command("REPLICAOF", "NO", "ONE")
        finally:
            client.close()
