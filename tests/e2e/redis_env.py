"""Real Celeriac and Celery worker processes sharing one Redis key prefix per test."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from tests import redis_support
from tests.redis_support import PrivateRedis

from .conftest import HERE, Env, wait_for


class RedisEnv(Env):
    """A test's own key prefix on the shared Redis (deleted afterwards), ledger and workers."""

    def __init__(self, tmp: Path, url: str | None = None) -> None:
        super().__init__(tmp)
        self.prefix = redis_support.new_prefix()
        self.url = url or redis_support.url_with_prefix(self.prefix)
        self.env.update(
            CELERIAC_BROKER_URL=self.url,
            CELERIAC_RESULT_BACKEND=self.url,
            INTEROP_REDIS_URL=redis_support.base_url(),
            INTEROP_PREFIX=self.prefix,
        )

    def _spawn(self, name: str, argv: list[str], ready: bytes) -> subprocess.Popen[bytes]:
        log_path = self.tmp / f"{name}.log"
        with open(log_path, "wb") as log:
            proc = subprocess.Popen(
                argv, env=self.env, stdout=log, stderr=subprocess.STDOUT, cwd=self.tmp
            )
        proc.log_path = log_path  # type: ignore[attr-defined]
        self.workers.append(proc)
        wait_for(
            lambda: ready in log_path.read_bytes() or proc.poll() is not None,
            30,
            f"worker {name} to start",
        )
        assert proc.poll() is None, self.log(proc)
        return proc

    def start_worker(self, *args: str, name: str | None = None) -> subprocess.Popen[bytes]:
        name = name or f"w{len(self.workers) + 1}"
        argv = [sys.executable, "-m", "celeriac", "-A", "redis_tasks:app", "worker"]
        return self._spawn(name, [*argv, "-l", "info", "-n", f"{name}@e2e", *args], b" ready:")

    def start_celery_worker(self, name: str = "celery") -> subprocess.Popen[bytes]:
        argv = [sys.executable, "-m", "celery", "-A", "celery_tasks", "worker", "-P", "solo"]
        argv += ["-l", "info", "-n", f"{name}@e2e", "--without-mingle", "--without-gossip"]
        return self._spawn(name, [*argv, "--without-heartbeat"], b" ready.")

    def start_celery_worker_on(self, queue: str, name: str) -> subprocess.Popen[bytes]:
        """A Celery worker on ``queue`` that answers remote control while a task runs (a
        prefork child runs it; the solo pool would read commands only between tasks)."""
        argv = [sys.executable, "-m", "celery", "-A", "celery_tasks", "worker", "-P", "prefork"]
        argv += ["-c", "1"]
        argv += ["-l", "info", "-n", f"{name}@e2e", "-Q", queue, "--without-mingle"]
        return self._spawn(name, [*argv, "--without-gossip", "--without-heartbeat"], b" ready.")

    def close(self) -> None:
        super().close()
        redis_support.drop(self.prefix)


__all__ = ["HERE", "PrivateRedis", "RedisEnv", "wait_for"]
