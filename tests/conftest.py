"""Service markers: a test marked ``redis``/``amqp``/``postgres`` runs against the real server.

Locally a missing server skips the test with the reason; under ``CI=true`` it fails, so CI can
never pass by skipping.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator
from urllib.parse import urlparse

import pytest

from celeriac.protocol import fastjson

SERVICES = {
    "redis": ("CELERIAC_TEST_REDIS_URL", "redis://127.0.0.1:6379/0"),
    "amqp": ("CELERIAC_TEST_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672//"),
    "postgres": ("CELERIAC_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test"),
}
_DEFAULT_PORTS = {"redis": 6379, "amqp": 5672, "postgres": 5432}
_reachable: dict[str, bool] = {}


def service_url(name: str) -> str:
    var, default = SERVICES[name]
    return os.environ.get(var, default)


def _is_up(name: str) -> bool:
    if name not in _reachable:
        url = urlparse(service_url(name))
        try:
            with socket.create_connection(
                (url.hostname or "127.0.0.1", url.port or _DEFAULT_PORTS[name]), timeout=1
            ):
                _reachable[name] = True
        except OSError:
            _reachable[name] = False
    return _reachable[name]


def pytest_runtest_setup(item: pytest.Item) -> None:
    for name in SERVICES:
        if item.get_closest_marker(name) and not _is_up(name):
            reason = f"{name} not reachable at {service_url(name)}"
            if os.environ.get("CI") == "true":
                pytest.fail(f"{reason} (CI=true: services must be up)")
            pytest.skip(reason)


#: Tests that run one after another in one process under pytest-xdist: the fault scenarios time
#: recoveries, and two at once on 2 cores would time each other.
SERIAL = "tests/faults/"


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """The fault scenarios first: under xdist they are the longest unit, so they should start
    at once while the other worker takes everything else."""
    items.sort(key=lambda item: not item.nodeid.startswith(SERIAL))


def pytest_xdist_make_scheduler(config: pytest.Config, log: object) -> object:
    """Spread tests one by one over the xdist workers, except the fault scenarios, which go to
    one worker as one unit (``xdist_group`` would say the same, but xdist 3.8 cannot apply it
    under pytest 9: it renames items through an attribute pytest no longer reads)."""
    from xdist.scheduler import LoadScopeScheduling

    class Scheduler(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            return SERIAL if nodeid.startswith(SERIAL) else nodeid

    return Scheduler(config, log)


# memcached: one private server per test process (tests/memcached_support.py)
from tests.memcached_support import memcached_server, private_memcached  # noqa: E402, F401


@pytest.fixture(params=["orjson", "json"])
def json_path(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """Each test twice: encoding through orjson (a plain value), then through :mod:`json` only,
    as without the ``fast`` extra."""
    if request.param == "json":
        monkeypatch.setattr(fastjson, "ENABLED", False)
    elif not fastjson.ENABLED:  # a dev dependency: CI proves the orjson path, never skips it
        if os.environ.get("CI") == "true":
            pytest.fail("orjson is not installed")
        pytest.skip("orjson is not installed")
    yield request.param
