"""Fixtures and hooks of the fault suite.

* Tests marked ``soak`` (the long scenarios) are deselected unless the ``-m`` expression names
  ``soak``: ``pytest -m soak`` runs them. Every other test here is marked ``faults`` and runs with
  the default ``pytest`` command.
* ``cluster`` builds the broker a test asked for (:mod:`tests.faults.cluster`) and removes it,
  its workers, keys, queues and files afterwards.
* ``record`` takes the test's numbers; with ``CELERIAC_RELIABILITY_REPORT=docs/reliability.md``
  the session writes the table there (:mod:`tests.faults.report`).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests import amqp_support, redis_support
from tests.faults import report
from tests.faults.cluster import Cluster, amqp_delete_queues, new_name
from tests.faults.proxy import FaultProxy
from tests.faults.servers import PrivateRabbit
from tests.redis_support import PrivateRedis

REPORT_ENV = "CELERIAC_RELIABILITY_REPORT"


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    wanted = "soak" in (config.getoption("markexpr", "") or "")
    keep, drop = [], []
    for item in items:
        if item.get_closest_marker("soak") is not None and not wanted:
            drop.append(item)
        else:
            keep.append(item)
    if drop:
        config.hook.pytest_deselected(items=drop)
        items[:] = keep


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[Any]) -> Iterator[None]:
    outcome = yield
    rep = outcome.get_result()
    res = report.RESULTS.get(item.nodeid)
    if res is None:
        return
    if rep.when == "call":
        res.seconds = round(call.duration, 1)
        if hasattr(rep, "wasxfail"):
            res.outcome = "xfail" if rep.skipped else "XPASS"
        else:
            res.outcome = {"passed": "pass", "failed": "FAIL"}.get(rep.outcome, rep.outcome)
    elif rep.when == "setup" and rep.skipped:
        res.outcome = ""


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    target = os.environ.get(REPORT_ENV)
    if target and report.RESULTS:
        path = Path(target)
        if not path.is_absolute():
            path = Path(session.config.rootpath) / path
        report.write(path)


@pytest.fixture
def record(request: pytest.FixtureRequest) -> report.Recorder:
    marker = request.node.get_closest_marker("scenario")
    assert marker is not None, "a fault test names its matrix entry with @cells(...)"
    broker = request.node.callspec.params.get("broker", "")
    return report.Recorder(request.node.nodeid, marker.args[0], broker)


@pytest.fixture(scope="session")
def fault_vhost() -> Iterator[str]:
    """One private vhost for the session's RabbitMQ cells (a vhost costs ~2.5 s to make and
    delete with rabbitmqctl, so tests use queue names of their own inside it)."""
    with amqp_support.private_vhost() as name:
        yield name


Factory = Callable[..., Cluster]


@pytest.fixture
def cluster(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Factory]:
    """``cluster(broker, vt=2.0, proxy=False, private=False, **settings)`` -> :class:`Cluster`.

    ``vt``: the visibility timeout; ``proxy``: who reaches the broker through a
    :class:`FaultProxy` (``"workers"``, ``"client"`` or ``"both"``); ``private``: a broker
    server of the test's own (Redis: AOF with ``appendfsync always``; RabbitMQ: a private node)
    that it may stop and restart; ``private_backend``: results in a private redis-server
    (``c.backend_server``) the test may stop.
    """
    made: list[Cluster] = []

    def make(
        broker: str,
        *,
        vt: float = 2.0,
        proxy: str = "",
        private: bool = False,
        private_backend: bool = False,
        **conf: Any,
    ) -> Cluster:
        tmp = tmp_path / f"c{len(made)}"
        tmp.mkdir()
        options: dict[str, Any] = {"visibility_timeout": vt}
        options.update(conf.pop("broker_transport_options", {}))
        cleanups: list[Callable[[], None]] = []
        server: Any = None
        prefix = redis_support.new_prefix()
        redis_backend = redis_support.url_with_prefix(prefix)
        cleanups.append(lambda: redis_support.drop(prefix))
        if broker == "sqlite":
            url = f"sqlite:///{tmp / 'broker.sqlite3'}"
            backend: str | None = url
            port = 0
        elif broker == "redis":
            if private:
                server = PrivateRedis(tmp, appendfsync="always")
                server.start()
                cleanups.append(server.stop)
                url = backend = server.url
                port = server.port
            else:
                options["global_keyprefix"] = prefix
                url = redis_support.base_url()
                backend = redis_backend
                port = int(url.split(":")[2].split("/")[0])
        elif broker == "amqp":
            queue = new_name()
            conf.setdefault("task_default_queue", queue)
            options.setdefault("dead_letter_queue", f"{queue}.dead")
            if private:
                server = PrivateRabbit(tmp)
                server.start()
                cleanups.append(server.stop)
                url = server.url
                port = server.port
            else:
                vhost = request.getfixturevalue("fault_vhost")
                url = amqp_support.url_for(vhost)
                port = int(url.rsplit(":", 1)[1].split("/")[0])
                names = [queue, f"{queue}.dead"]
                cleanups.append(lambda: amqp_delete_queues(url, names))
            backend = redis_backend
        else:
            raise ValueError(broker)
        backend_server = None
        if private_backend:
            (tmp / "results").mkdir()
            backend_server = PrivateRedis(tmp / "results", appendfsync="always")
            backend_server.start()
            cleanups.append(backend_server.stop)
            backend = backend_server.url
        conf["broker_transport_options"] = options
        fault_proxy = FaultProxy(port) if proxy else None
        client_url = worker_url = url
        if fault_proxy is not None:
            proxied = url.replace(f":{port}", f":{fault_proxy.port}", 1)
            if proxy in ("workers", "both"):
                worker_url = proxied
            if proxy in ("client", "both"):
                client_url = proxied
        c = Cluster(broker, tmp, client_url, backend, conf, worker_url, fault_proxy, cleanups)
        c.server = server  # type: ignore[attr-defined]
        c.backend_server = backend_server  # type: ignore[attr-defined]
        c.prefix = prefix  # type: ignore[attr-defined]
        made.append(c)
        return c

    try:
        yield make
    finally:
        for c in made:
            c.close()
