"""A Celery project with only its import switched to celeriac: its workflows (chain, group and
chord called with ``()``, errbacks in both of Celery's forms) run on Celeriac workers, and the
same calls from a Celeriac client run on stock Celery workers; on Redis, and on RabbitMQ with
``rpc://`` results (where Celery's backend has no chords, so the chords are left out)."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from tests import amqp_support, redis_support

from .conftest import HERE, wait_for

# One xdist process for the module, so each broker's two workers start once.
pytestmark = [pytest.mark.e2e, pytest.mark.xdist_group("dropin_celery_project")]

IMPORT = "from celery import Celery, chain, chord, group"
SWITCHED = "from celeriac import Celery, chain, chord, group"


@dataclass
class Fleet:
    """One broker: a Celeriac worker on one queue, a Celery worker on another, and the
    project switched to celeriac, imported here as the client."""

    tmp: Path
    env: dict[str, str]
    client: ModuleType
    queues: dict[str, str]
    chords: bool
    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)

    def errbacks(self, task_id: str) -> list[tuple[str, ...]]:
        """The errback calls the workers noted for ``task_id`` (form, id, detail)."""
        ledger = Path(self.env["DROPIN_LEDGER"])
        lines = [line for p in ledger.glob("*.log") for line in p.read_text().splitlines()]
        return sorted(tuple(line.split(" ", 2)) for line in lines if f" {task_id} " in line)


def write_project(root: Path, switch: bool) -> Path:
    text = (HERE / "dropin_celery_project.py").read_text()
    assert text.count(IMPORT) == 1
    folder = root / ("celeriac_side" if switch else "celery_side")
    folder.mkdir()
    (folder / "proj_tasks.py").write_text(text.replace(IMPORT, SWITCHED) if switch else text)
    return folder


def spawn(fleet: Fleet, name: str, argv: list[str], path: Path, ready: bytes) -> None:
    log_path = fleet.tmp / f"{name}.log"
    env = {**fleet.env, "PYTHONPATH": f"{path}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(argv, env=env, stdout=log, stderr=subprocess.STDOUT, cwd=path)
    fleet.procs.append(proc)
    wait_for(lambda: ready in log_path.read_bytes() or proc.poll() is not None, 30, f"{name} up")
    assert proc.poll() is None, log_path.read_text(errors="replace")


def import_client(folder: Path) -> ModuleType:
    spec = importlib.util.spec_from_file_location("proj_tasks", folder / "proj_tasks.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(
    scope="module",
    params=[
        pytest.param("redis", marks=pytest.mark.redis),
        pytest.param("amqp", marks=pytest.mark.amqp),
    ],
)
def fleet(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Fleet]:
    tmp = tmp_path_factory.mktemp(f"dropin-{request.param}")
    (tmp / "ledger").mkdir()
    tag = uuid.uuid4().hex[:8]
    queues = {"celeriac": f"dropin-celeriac-{tag}", "celery": f"dropin-celery-{tag}"}
    with_vhost = amqp_support.private_vhost() if request.param == "amqp" else None
    prefix = redis_support.new_prefix()
    if with_vhost is not None:
        url = amqp_support.url_for(with_vhost.__enter__())
        broker = {"DROPIN_BROKER": url, "DROPIN_BACKEND": "rpc://"}
    else:
        url = redis_support.base_url()
        broker = {"DROPIN_BROKER": url, "DROPIN_BACKEND": url, "DROPIN_PREFIX": prefix}
    env = {**os.environ, **broker, "DROPIN_LEDGER": str(tmp / "ledger")}
    saved = {k: os.environ.get(k) for k in [*broker, "DROPIN_LEDGER", "DROPIN_QUEUE"]}
    os.environ.update({**broker, "DROPIN_LEDGER": env["DROPIN_LEDGER"], "DROPIN_QUEUE": "-"})
    ours, theirs = write_project(tmp, switch=True), write_project(tmp, switch=False)
    fleet = Fleet(tmp, env, import_client(ours), queues, chords=request.param == "redis")
    try:
        fleet.env["DROPIN_QUEUE"] = queues["celeriac"]
        argv = [sys.executable, "-m", "celeriac", "-A", "proj_tasks:app", "worker", "-c", "2"]
        spawn(fleet, "celeriac", [*argv, "-P", "threads", "-n", f"c-{tag}@e2e"], ours, b" ready:")
        fleet.env["DROPIN_QUEUE"] = queues["celery"]
        argv = [sys.executable, "-m", "celery", "-A", "proj_tasks", "worker", "-P", "solo"]
        argv += ["-n", f"k-{tag}@e2e", "--without-mingle", "--without-gossip"]
        spawn(fleet, "celery", [*argv, "--without-heartbeat", "-l", "info"], theirs, b" ready.")
        yield fleet
    finally:
        for proc in fleet.procs:
            proc.kill()
            proc.wait(10)
        fleet.client.app.close()
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        if with_vhost is not None:
            with_vhost.__exit__(None, None, None)
        redis_support.drop(prefix)


def run_project(fleet: Fleet, worker: str) -> None:
    client: Any = fleet.client
    assert type(client.app).__module__ == "celeriac.app"  # the switched module
    client.app.conf.task_default_queue = fleet.queues[worker]
    started = client.start_workflows(chords=fleet.chords)
    assert started["chain"].get(timeout=20) == 113
    assert started["group"].get(timeout=20) == [0, 2, 4, 6, 8]
    if fleet.chords:
        assert started["chord"].get(timeout=20) == 10
        assert started["chord_body_later"].get(timeout=20) == 9
    failed = started["failed"]
    with pytest.raises(ValueError, match="bad"):
        failed.get(timeout=20)
    expected = [("request", failed.id, "ValueError:bad"), ("task_id", failed.id, "-")]
    wait_for(lambda: len(fleet.errbacks(failed.id)) >= 2, 20, f"errbacks of {failed.id}")
    assert fleet.errbacks(failed.id) == expected  # each form called once, as its form says


def test_the_switched_project_runs_its_workflows_on_celeriac_workers(fleet: Fleet) -> None:
    run_project(fleet, "celeriac")


def test_a_celeriac_client_runs_the_same_workflows_on_celery_workers(fleet: Fleet) -> None:
    run_project(fleet, "celery")
