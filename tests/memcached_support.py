"""Private memcached servers for tests: one per test session (per xdist process), on a free port,
killed at the end; a test that restarts or flushes one starts its own.

Without the ``memcached`` binary a test skips with the reason, and fails under ``CI=true``
(``.ci/run`` installs Debian's package).
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator

import pytest


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _answers(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


class MemcachedServer:
    """``memcached -p <port> -U 0 -l 127.0.0.1 -u nobody`` in the background."""

    def __init__(self, binary: str, port: int, *extra: str) -> None:
        self.binary, self.port, self.extra = binary, port, extra
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"memcached://127.0.0.1:{self.port}"

    def start(self, timeout: float = 10.0) -> None:
        args = [self.binary, "-p", str(self.port), "-U", "0", "-l", "127.0.0.1", "-u", "nobody"]
        self.proc = subprocess.Popen(
            [*args, *self.extra], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
        )
        deadline = time.monotonic() + timeout
        while not _answers(self.port):
            if self.proc.poll() is not None:
                err = self.proc.stderr.read().decode(errors="replace") if self.proc.stderr else ""
                raise RuntimeError(f"memcached on port {self.port} exited: {err.strip()}")
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"memcached on port {self.port} did not answer in {timeout}s")
            time.sleep(0.01)

    def stop(self) -> None:
        proc, self.proc = self.proc, None
        if proc is not None and proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)
        if proc is not None and proc.stderr is not None:
            proc.stderr.close()

    def restart(self) -> None:
        """Stop and start again on the same port: everything it held is gone."""
        self.stop()
        self.start()


def start_memcached(*extra: str) -> MemcachedServer:
    """A running private memcached (skips, or fails under CI=true, without the binary)."""
    binary = shutil.which("memcached")
    if binary is None:
        reason = "memcached is not installed (apt-get install memcached)"
        if os.environ.get("CI") == "true":
            pytest.fail(f"{reason}; CI=true: .ci/run installs it")
        pytest.skip(reason)
    error: Exception | None = None
    for _ in range(3):  # a free port can be taken by someone else before memcached binds it
        server = MemcachedServer(binary, free_port(), *extra)
        try:
            server.start()
            return server
        except RuntimeError as exc:
            error = exc
    raise AssertionError(f"could not start memcached: {error}")


@pytest.fixture(scope="session")
def memcached_server() -> Iterator[MemcachedServer]:
    """This test process's memcached, shared by its tests (each uses keys of its own)."""
    server = start_memcached()
    yield server
    server.stop()


@pytest.fixture
def private_memcached() -> Iterator[MemcachedServer]:
    """A memcached of this test's own, to restart or flush."""
    server = start_memcached()
    yield server
    server.stop()
