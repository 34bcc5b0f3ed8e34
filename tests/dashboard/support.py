"""A dashboard and a worker as real processes on one private SQLite broker, and a browser."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

HERE = Path(__file__).parent
CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"


def wait_for(check: Callable[[], Any], timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def get(url: str, timeout: float = 5.0) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()
    except OSError:
        return 0, ""


class Stack:
    """One test module's broker file, ledger, worker and dashboard processes."""

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.ledger = tmp / "ledger"
        self.ledger.mkdir()
        self.url = f"sqlite:///{tmp / 'broker.sqlite3'}"
        self.history = f"sqlite:///{tmp / 'history.sqlite3'}"
        self.queue = f"dash-{uuid.uuid4().hex[:8]}"
        self.node = f"dash-{uuid.uuid4().hex[:6]}@e2e"
        self.env = {
            **os.environ,
            "CELERIAC_BROKER_URL": self.url,
            "DASH_LEDGER": str(self.ledger),
            "PYTHONPATH": f"{HERE}{os.pathsep}{os.environ.get('PYTHONPATH', '')}",
        }
        self.procs: list[subprocess.Popen[bytes]] = []
        self.dashboard: subprocess.Popen[bytes] | None = None
        self.base = ""

    def _spawn(self, name: str, *args: str) -> subprocess.Popen[bytes]:
        log = open(self.tmp / f"{name}.log", "ab")  # noqa: SIM115 - owned by the process
        proc = subprocess.Popen(
            [sys.executable, "-m", "celeriac", "-A", "dash_tasks:app", *args],
            env=self.env,
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=self.tmp,
        )
        self.procs.append(proc)
        return proc

    def log(self, name: str) -> str:
        return (self.tmp / f"{name}.log").read_text(errors="replace")

    def start_worker(self) -> None:
        proc = self._spawn(
            "worker", "worker", "-E", "-c", "1", "-Q", self.queue, "-n", self.node, "-l", "info"
        )
        wait_for(
            lambda: " ready:" in self.log("worker") or proc.poll() is not None,
            30,
            "the worker to start",
        )
        assert proc.poll() is None, self.log("worker")

    def start_dashboard(self) -> None:
        port = free_port()
        self.dashboard = self._spawn(
            "dashboard",
            "dashboard",
            "--port",
            str(port),
            "--history",
            self.history,
            "--refresh",
            "0.3",
        )
        self.base = f"http://127.0.0.1:{port}"
        wait_for(
            lambda: get(self.base + "/")[0] == 200 or self.dashboard.poll() is not None,  # type: ignore[union-attr]
            30,
            "the dashboard to answer",
        )
        assert self.dashboard.poll() is None, self.log("dashboard")

    def stop_dashboard(self) -> int:
        assert self.dashboard is not None
        self.dashboard.send_signal(signal.SIGTERM)
        return self.dashboard.wait(20)

    def runs(self, task_id: str) -> int:
        """How many times the task ran, by the ledgers."""
        return sum(
            line == f"run {task_id}"
            for path in self.ledger.glob("*.log")
            for line in path.read_text().splitlines()
        )

    def close(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in self.procs:
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)


def browser(artifacts: Path) -> Any:
    from selenium import webdriver

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage"):
        options.add_argument(arg)
    options.add_argument("--window-size=1400,1000")
    service = webdriver.ChromeService(executable_path=CHROMEDRIVER)
    driver = webdriver.Chrome(options=options, service=service)
    driver.artifacts = artifacts
    return driver


def screenshot(driver: Any, name: str) -> Path:
    """Keep what the browser shows as a test artifact; its path is printed (pytest -s)."""
    path: Path = driver.artifacts / f"{name}.png"
    driver.save_screenshot(str(path))
    print(f"screenshot: {path}")
    return path


def text(driver: Any, css: str) -> str | None:
    """The text of the first element matching ``css`` now (None: none); read in the page,
    so a live update swapping the element cannot make it stale."""
    value = driver.execute_script(
        "var e = document.querySelector(arguments[0]); return e ? e.textContent.trim() : null;",
        css,
    )
    return None if value is None else str(value)


def live_updates(driver: Any, count: int, timeout: float = 10.0) -> None:
    """Wait until the page's live part has been fetched again ``count`` times from now."""
    seen: list[str | None] = [driver.execute_script("return live.dataset.updated || null;")]

    def one_more() -> bool:
        now = driver.execute_script("return live.dataset.updated || null;")
        if now != seen[-1]:
            seen.append(now)
        return len(seen) > count

    wait_for(one_more, timeout, f"{count} live updates")
