"""Real Celeriac and Celery workers on a private RabbitMQ vhost per test (deleted afterwards)."""

from __future__ import annotations

import sys
from pathlib import Path

from tests import amqp_support

from .redis_env import RedisEnv


class AmqpEnv(RedisEnv):
    """A test's own vhost, ledger and worker processes; ``port`` routes workers via a proxy."""

    def __init__(self, tmp: Path, vhost: str, port: int | None = None) -> None:
        super().__init__(tmp, url="unused://")
        self.vhost = vhost
        self.url = amqp_support.url_for(vhost)
        self.worker_url = amqp_support.url_for(vhost, port)
        self.env.update(
            CELERIAC_BROKER_URL=self.worker_url,
            CELERIAC_RESULT_BACKEND="rpc://",
            INTEROP_AMQP_URL=self.url,
        )

    def start_worker(self, *args: str, name: str | None = None):  # type: ignore[no-untyped-def]
        name = name or f"w{len(self.workers) + 1}"
        argv = [sys.executable, "-m", "celeriac", "-A", "amqp_tasks:app", "worker"]
        return self._spawn(name, [*argv, "-l", "info", "-n", f"{name}@e2e", *args], b" ready:")

    def start_celery_worker(self, name: str = "celery"):  # type: ignore[no-untyped-def]
        argv = [sys.executable, "-m", "celery", "-A", "celery_amqp_tasks", "worker", "-P", "solo"]
        argv += ["-l", "info", "-n", f"{name}@e2e", "--without-mingle", "--without-gossip"]
        return self._spawn(name, [*argv, "--without-heartbeat"], b" ready.")

    def close(self) -> None:
        for proc in self.workers:
            if proc.poll() is None:
                proc.kill()
                proc.wait(10)
