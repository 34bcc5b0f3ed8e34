"""``celeriac worker`` as a service: detached with a pidfile and a logfile, stopped by SIGTERM
to the pid in the file; the README's systemd unit's command; the options Celery users pass."""

from __future__ import annotations

import configparser
import os
import re
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from celeriac import Celeriac, SoftTimeLimitExceeded
from celeriac.exceptions import TimeLimitExceeded
from tests.e2e.conftest import HERE, wait_for
from tests.readme_blocks import blocks

ROOT = HERE.parents[1]


def _env(url: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CELERIAC_")}
    return {**env, "CELERIAC_BROKER_URL": url, "PYTHONPATH": str(HERE)}


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def _children(pid: int) -> list[int]:
    out = subprocess.run(["ps", "-o", "pid=", "--ppid", str(pid)], capture_output=True, text=True)
    return [int(p) for p in out.stdout.split()]


def test_detach_with_pidfile_and_logfile_then_sigterm(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'svc.sqlite3'}"
    pidfile, logfile = tmp_path / "w.pid", tmp_path / "w.log"
    argv = [sys.executable, "-m", "celeriac", "-A", "svc_tasks", "worker", "-P", "prefork"]
    argv += ["-c", "1", "-l", "info", "-n", "svc@e2e", "-O", "fair", "--without-gossip"]
    argv += ["--without-mingle", "--without-heartbeat", "--time-limit", "1.5"]
    argv += ["--soft-time-limit", "0.5", "-D", "--pidfile", str(pidfile), "-f", str(logfile)]
    logfile.write_text("an earlier line\n")  # --logfile appends
    started = time.monotonic()
    done = subprocess.run(argv, env=_env(url), cwd=tmp_path, capture_output=True, timeout=30)
    # the command returns at once, with nothing on the terminal
    assert (done.returncode, done.stdout, done.stderr) == (0, b"", b"")
    assert time.monotonic() - started < 15
    wait_for(lambda: logfile.exists() and b" ready:" in logfile.read_bytes(), 30, "ready")
    pid = int(pidfile.read_text())
    assert pidfile.read_text() == f"{pid}\n"
    assert _alive(pid)
    pid_died = False
    try:
        app = Celeriac("svc_client", broker_url=url)
        try:
            sig = app.signature("svc_tasks.add", (2, 3))
            assert sig.apply_async().get(timeout=20) == 5
            with pytest.raises(SoftTimeLimitExceeded):
                app.signature("svc_tasks.sleepy", (5,)).apply_async().get(timeout=20)
            with pytest.raises(TimeLimitExceeded):
                app.signature("svc_tasks.stubborn", (5,)).apply_async().get(timeout=20)
        finally:
            app.close()
        # a second worker with the same pidfile refuses to start, and says why
        again = subprocess.run(
            [*argv[: argv.index("-D")], "--pidfile", str(pidfile)],
            env=_env(url),
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert again.returncode == 1
        assert f"names pid {pid}, which is running" in again.stderr
        os.kill(pid, signal.SIGTERM)
        wait_for(lambda: not _alive(pid), 30, "the detached worker to stop")
        pid_died = True
        assert not pidfile.exists()
        log = logfile.read_text()
        assert log.startswith("an earlier line\n")
        assert "warm shutdown" in log and "svc@e2e stopped" in log
    finally:
        if not pid_died and _alive(pid):
            os.kill(pid, signal.SIGKILL)


def test_readme_systemd_unit_command_runs_and_stops_on_sigterm(tmp_path: Path) -> None:
    readme = (ROOT / "README.md").read_text()
    (unit_block,) = [b for b in blocks(readme) if b.lang == "ini"]
    unit = configparser.ConfigParser()
    unit.read_string(unit_block.code)
    service = unit["Service"]
    assert (service["Type"], service["KillMode"]) == ("simple", "mixed")
    argv = shlex.split(service["ExecStart"])
    assert Path(argv[0]).name == "celeriac" and argv[1:4] == ["-A", "proj", "worker"]
    (proj,) = [b for b in blocks(readme) if b.filename == "proj.py"]
    (tmp_path / "proj.py").write_text(proj.code)
    log = tmp_path / "journal.log"
    env = {k: v for k, v in os.environ.items() if not k.startswith("CELERIAC_")}
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "celeriac", *argv[1:]],
            cwd=tmp_path,  # WorkingDirectory
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        wait_for(lambda: b" ready:" in log.read_bytes() or proc.poll() is not None, 30, "ready")
        assert proc.poll() is None, log.read_text()
        children = _children(proc.pid)
        assert len(children) == int(argv[argv.index("-c") + 1])
        proc.send_signal(signal.SIGTERM)  # KillMode=mixed: the main process alone
        assert proc.wait(30) == 0, log.read_text()
        wait_for(lambda: not any(_alive(c) for c in children), 10, "the children to end")
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)


def _cli(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    url = f"sqlite:///{cwd / 'cli.sqlite3'}"
    return subprocess.run(
        [sys.executable, "-m", "celeriac", "-A", "svc_tasks", *args],
        env=_env(url),
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_worker_option_errors(tmp_path: Path) -> None:
    done = _cli("worker", "-c", "-1", cwd=tmp_path)
    assert done.returncode == 2
    assert (
        "Invalid value for '-c' / '--concurrency': must be 0 (the CPU count) or more, not -1"
        in (done.stderr)
    )
    assert "Traceback" not in done.stderr
    done = _cli("worker", "-D", cwd=tmp_path)
    assert (done.returncode, done.stderr.splitlines()[-1]) == (
        2,
        "Error: --detach needs --pidfile (to find and stop the worker)",
    )
    done = _cli("worker", "--autoscale", "4,1", "-P", "solo", cwd=tmp_path)  # (README)
    assert (done.returncode, done.stderr.splitlines()[-1]) == (
        2,
        "Error: --autoscale: the solo pool has a fixed size; use --pool prefork or threads",
    )
    done = _cli("worker", "--autoscale", "4-1", cwd=tmp_path)
    assert (done.returncode, done.stderr.splitlines()[-1]) == (
        2,
        "Error: Invalid value for '--autoscale': --autoscale '4-1': expected MAX,MIN (two "
        "numbers, e.g. 10,3)",
    )


def test_solo_says_it_runs_one_task_at_a_time(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'solo.sqlite3'}"
    log = tmp_path / "solo.log"
    argv = [sys.executable, "-m", "celeriac", "-A", "svc_tasks", "worker", "-P", "solo"]
    with open(log, "wb") as out:  # default level (warning): the banner shows all the same
        proc = subprocess.Popen(
            [*argv, "-c", "2", "-n", "solo@e2e"],
            env=_env(url),
            cwd=tmp_path,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        wait_for(lambda: b" ready:" in log.read_bytes() or proc.poll() is not None, 30, "ready")
        text = log.read_text()
        assert "the solo pool runs one task at a time; -c 2 ignored" in text
        assert "  pool:        solo: one task at a time, in the worker process\n" in text
        assert "  concurrency: 1\n" in text
        assert re.search(r"solo@e2e ready: queues=celery pool=solo concurrency=1 prefetch=4 ", text)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
