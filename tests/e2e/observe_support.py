"""Worker processes of ``observe_tasks`` with their HTTP side, and reading it."""

from __future__ import annotations

import http.client
import re
import subprocess
import sys
from pathlib import Path

from .conftest import Env, wait_for

SERVING = re.compile(rb"serving (?P<paths>[/a-z ]+) on http://(?P<host>[^:]+):(?P<port>\d+)")


def start_observed(env: Env, *args: str, name: str = "w1") -> tuple[subprocess.Popen[bytes], int]:
    """A worker serving /metrics, /livez and /readyz on one free port; (process, port)."""
    log_path = env.tmp / f"{name}.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            [
                *(sys.executable, "-m", "celeriac", "-A", "observe_tasks:app", "worker"),
                *("-l", "info", "-n", f"{name}@observe", "--metrics-port", "0"),
                *("--health-port", "0", *args),
            ],
            env=env.env,
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=env.tmp,
        )
    proc.log_path = log_path  # type: ignore[attr-defined]
    env.workers.append(proc)
    wait_for(
        lambda: b" ready:" in log_path.read_bytes() or proc.poll() is not None,
        30,
        f"worker {name} to start",
    )
    assert proc.poll() is None, env.log(proc)
    found = SERVING.search(log_path.read_bytes())
    assert found is not None, env.log(proc)
    assert found["paths"].split() == [b"/livez", b"/metrics", b"/readyz"]  # one server
    assert found["host"] == b"0.0.0.0"  # worker_http_host's default
    return proc, int(found["port"])


def get(port: int, path: str, timeout: float = 5.0) -> tuple[int, str]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request("GET", path)
        response = conn.getresponse()
        return response.status, response.read().decode()
    finally:
        conn.close()


def samples(text: str) -> dict[str, float]:
    """``name{labels}`` -> value of every sample in a text exposition."""
    out = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            key, value = line.rsplit(" ", 1)
            out[key] = float(value)
    return out


def ledger_pids(ledger: Path) -> set[str]:
    return {p.stem for p in ledger.glob("*.log") if p.read_text().strip()}
