"""Real Celeriac and Celery worker processes sharing one Redis key prefix per test."""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
from pathlib import Path

from tests import redis_support

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

    def close(self) -> None:
        super().close()
        redis_support.drop(self.prefix)


class PrivateRedis:
    """A redis-server this test owns (append-only file on), so it may stop and restart it."""

    def __init__(self, tmp: Path) -> None:
        self.dir = tmp / "redis"
        self.dir.mkdir()
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [
                "redis-server",
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--dir",
                str(self.dir),
                "--appendonly",
                "yes",
                "--appendfsync",
                "everysec",
                "--save",
                "",
            ],
            stdout=subprocess.DEVNULL,
        )
        wait_for(self._up, 10, "the private redis-server to answer")

    def _up(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=0.2):
                return True
        except OSError:
            return False

    def stop(self) -> None:
        """A clean shutdown: Redis writes and fsyncs its append-only file, then exits."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            self.proc.wait(10)


__all__ = ["HERE", "PrivateRedis", "RedisEnv", "wait_for"]
