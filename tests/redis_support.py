"""Redis for tests: a dedicated logical DB and a fresh key prefix per use, deleted afterwards.

The Redis server may be shared with other work, so tests never flush anything: every key they
create carries their own prefix, and :func:`drop` deletes exactly those keys.
"""

from __future__ import annotations

import signal
import socket
import subprocess
import time
import uuid
from pathlib import Path
from urllib.parse import urlsplit

from tests.conftest import service_url

DB = 13


def base_url(db: int = DB) -> str:
    parts = urlsplit(service_url("redis"))
    return parts._replace(path=f"/{db}", query="").geturl()


def new_prefix() -> str:
    return f"celeriac-test-{uuid.uuid4().hex[:12]}:"


def url_with_prefix(prefix: str, db: int = DB) -> str:
    return f"{base_url(db)}?global_keyprefix={prefix}"


def drop(prefix: str, db: int = DB) -> None:
    """Delete every key under ``prefix`` (and the result keys tests wrote without one)."""
    import redis

    client = redis.Redis.from_url(base_url(db))
    try:
        keys = list(client.scan_iter(match=f"{prefix}*", count=1000))
        for i in range(0, len(keys), 500):
            client.delete(*keys[i : i + 500])
    finally:
        client.close()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _answers(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.2):
            return True
    except OSError:
        return False


def _wait_until_up(port: int) -> None:
    deadline = time.monotonic() + 10
    while not _answers(port):
        if time.monotonic() > deadline:
            raise AssertionError(f"nothing answers on port {port}")
        time.sleep(0.02)


class PrivateRedis:
    """A redis-server a test owns (append-only file on), so it may stop and restart it."""

    def __init__(self, tmp: Path, appendfsync: str = "everysec") -> None:
        self.appendfsync = appendfsync
        self.dir = tmp / "redis"
        self.dir.mkdir(exist_ok=True)
        self.port = _free_port()
        self.socket_path = self.dir / "redis.sock"
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.procs: list[subprocess.Popen[bytes]] = []

    def start(self) -> None:
        args = ["--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(self.dir)]
        args += ["--unixsocket", str(self.socket_path), "--appendonly", "yes"]
        args += ["--appendfsync", self.appendfsync, "--save", ""]
        self.procs.append(subprocess.Popen(["redis-server", *args], stdout=subprocess.DEVNULL))
        _wait_until_up(self.port)

    def start_sentinel(self, master_name: str = "mymaster") -> int:
        """A Sentinel watching this server; returns its port."""
        port = _free_port()
        conf = self.dir / f"sentinel-{port}.conf"
        conf.write_text(
            f"port {port}\nbind 127.0.0.1\ndir {self.dir}\n"
            f"sentinel monitor {master_name} 127.0.0.1 {self.port} 1\n"
        )
        self.procs.append(
            subprocess.Popen(["redis-server", str(conf), "--sentinel"], stdout=subprocess.DEVNULL)
        )
        _wait_until_up(port)
        return port

    def kill(self) -> None:
        """A crash (SIGKILL): what survives is what the append-only file had (all of it with
        ``appendfsync="always"``)."""
        while self.procs:
            proc = self.procs.pop()
            if proc.poll() is None:
                proc.kill()
                proc.wait(10)

    def stop(self) -> None:
        """A clean shutdown: Redis writes and fsyncs its append-only file, then exits."""
        while self.procs:
            proc = self.procs.pop()
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                proc.wait(10)
