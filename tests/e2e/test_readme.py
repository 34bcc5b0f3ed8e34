"""The README's tutorial, run as written, and what a new user meets in the first hour.

The README's Python blocks are executed (tests/readme_blocks.py says how they are classified:
``# proj.py`` blocks are the project's files, ``>>>`` blocks doctests, other blocks scripts; a
block meant as a fragment is marked with ``<!-- readme-test: fragment (why) -->`` on the line
before it, and is only compiled). They run against one worker started with the tutorial's own
command in the project's directory, from a client process in another directory: the default
SQLite file must be found the same way by both. The same worker serves the CLI and logging
checks.
"""

from __future__ import annotations

import os
import re
import shlex
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.conftest import wait_for
from tests.readme_blocks import blocks, dump

pytestmark = pytest.mark.xdist_group("readme")

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.md"
RUNNER = ROOT / "tests" / "readme_blocks.py"


class Project:
    def __init__(self, tmp: Path) -> None:
        self.dir = tmp / "proj"
        self.client = tmp / "client"
        self.dir.mkdir()
        self.client.mkdir()
        self.items = blocks(README.read_text())
        for block in self.items:
            if block.kind == "file":
                (self.dir / str(block.filename)).write_text(block.code)
        env = {k: v for k, v in os.environ.items() if not k.startswith("CELERIAC_")}
        self.env = {**env, "PYTHONPATH": str(self.dir)}
        self.log = self.dir / "worker.log"
        self.worker: subprocess.Popen[bytes] | None = None

    def worker_argv(self) -> list[str]:
        """The tutorial's worker command, as the README writes it."""
        line = next(
            ln for ln in README.read_text().splitlines() if ln.startswith("celeriac -A proj worker")
        )
        argv = shlex.split(line.split("#")[0])
        assert argv[0] == "celeriac"
        return [sys.executable, "-m", "celeriac", *argv[1:]]

    def start(self) -> None:
        with open(self.log, "wb") as log:
            self.worker = subprocess.Popen(
                [*self.worker_argv(), "-l", "info"],
                cwd=self.dir,
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        wait_for(
            lambda: b" ready:" in self.log.read_bytes() or self.worker.poll() is not None,  # type: ignore[union-attr]
            30,
            "the tutorial's worker",
        )
        assert self.worker.poll() is None, self.log.read_text()

    def cli(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        """``celeriac -A proj ...`` run from the client's directory."""
        done = subprocess.run(
            [sys.executable, "-m", "celeriac", "-A", "proj", *args],
            cwd=self.client,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        if check:
            assert done.returncode == 0, done.stderr
        return done

    def stop(self) -> None:
        if self.worker is not None and self.worker.poll() is None:
            self.worker.send_signal(signal.SIGTERM)
            try:
                self.worker.wait(30)
            except subprocess.TimeoutExpired:
                self.worker.kill()
                self.worker.wait(5)


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Project]:
    p = Project(tmp_path_factory.mktemp("readme"))
    p.start()
    try:
        yield p
    finally:
        p.stop()


def test_every_python_block_is_run_or_marked(project: Project) -> None:
    python = [b for b in project.items if b.lang == "python"]
    kinds = {b.kind for b in python}
    assert kinds <= {"file", "doctest", "script", "fragment"}
    # the tutorial: its project file and its two sessions are among what runs
    assert [b.filename for b in python if b.kind == "file"].count("proj.py") == 1
    assert sum(b.kind == "doctest" for b in python) >= 2
    for block in python:
        if block.kind == "fragment" and ">>>" not in block.code:
            compile(block.code, f"README.md:{block.lineno}", "exec")


def test_readme_blocks_run_from_another_directory(project: Project) -> None:
    """Every unmarked block runs, in a process whose working directory is not the project's
    (the tutorial's ``get()`` calls find the worker's SQLite file)."""
    spec = project.client / "blocks.json"
    dump([b for b in project.items if b.kind in ("doctest", "script")], spec)
    done = subprocess.run(
        [sys.executable, str(RUNNER), "README.md", str(spec)],
        cwd=project.client,
        env=project.env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert (done.returncode, done.stdout.strip()) == (0, "ok"), done.stdout + done.stderr
    # the client made no SQLite file of its own in its working directory
    assert sorted(p.name for p in project.client.iterdir()) == ["blocks.json"]


def test_banner_names_the_absolute_sqlite_file(project: Project) -> None:
    log = project.log.read_text()
    url = f"sqlite:///{project.dir}/celeriac.sqlite3"
    assert f"  broker:      {url}\n" in log
    assert f"  results:     {url}\n" in log
    assert "  app:         proj\n" in log
    assert "  pool:        prefork: 2 child process(es) (each consumes)\n" in log
    assert "  queues:      celery\n" in log
    tasks = re.search(r"  tasks \((\d+)\):\n((?:    \. .+\n)+)", log)
    assert tasks is not None, log
    names = ["proj.add", "proj.fetch", "proj.mul", "proj.tsum"]
    assert tasks.group(2).split() == [w for name in names for w in (".", name)]
    assert tasks.group(1) == "4"
    assert "INFO/MainProcess] celeriac 0.1.0: " in log  # logged at INFO, not WARNING
    assert re.search(r"INFO/MainProcess\] \S+ ready: queues=celery pool=prefork", log)


def test_cli_call_and_result_print_as_the_readme_says(project: Project) -> None:
    assert project.cli("call", "proj.add", "--args", "[2, 3]", "--wait").stdout == "5\n"
    task_id = project.cli("call", "proj.add", "--args", "[2, 3]").stdout.strip()
    wait_for(lambda: project.cli("result", task_id).stdout == "SUCCESS: 5\n", 20, "the result")
    # and the worker logged the task's arrival and end at INFO
    log = project.log.read_text()
    assert re.search(rf"INFO/\S+\] Task proj\.add\[{task_id}\] received\n", log), log
    assert re.search(rf"INFO/\S+\] Task proj\.add\[{task_id}\] succeeded in \d+\.\d+s: 5\n", log), (
        log
    )


def test_a_failure_is_logged_with_its_traceback(project: Project) -> None:
    # nothing listens on port 9 here: urlopen raises URLError, which fetch does not retry
    task_id = project.cli("call", "proj.fetch", "--args", '["http://127.0.0.1:9/"]').stdout.strip()
    pattern = re.compile(
        rf"ERROR/\S+\] Task proj\.fetch\[{task_id}\] failed in \d+\.\d+s: URLError: .*\n"
        r"Traceback \(most recent call last\):\n(?:.*\n)*?"
        r"  File \".*proj\.py\", line \d+, in download\n(?:.*\n)*?"
        r"urllib\.error\.URLError: "
    )
    wait_for(lambda: pattern.search(project.log.read_text()), 20, "the failure's log line")
    done = project.cli("result", task_id, check=False)
    assert done.stdout.startswith("FAILURE: URLError: "), done.stdout


def test_call_of_an_unknown_task_fails_with_a_hint(project: Project) -> None:
    done = project.cli("call", "proj.ad", "--args", "[2, 3]", check=False)
    assert done.returncode == 1
    assert done.stderr == (
        "Error: no task named 'proj.ad' in app proj; did you mean 'proj.add'? "
        "(--unregistered sends it anyway, for a task only other workers define)\n"
    )
    # --unregistered sends it: the worker dead-letters it as unknown, and says so
    task_id = project.cli("call", "proj.nosuch", "--unregistered").stdout.strip()
    wait_for(
        lambda: f"dead-lettered proj.nosuch[{task_id}]" in project.log.read_text(),
        20,
        "the unknown task to be dead-lettered",
    )


def test_bad_json_arguments_are_usage_errors(project: Project) -> None:
    done = project.cli("call", "proj.add", "--kwargs", "[1]", check=False)
    assert done.returncode == 2
    assert "Invalid value: --kwargs must be a JSON object" in done.stderr
    done = project.cli("call", "proj.add", "--args", "{}", check=False)
    assert "Invalid value: --args must be a JSON list (array)" in done.stderr
