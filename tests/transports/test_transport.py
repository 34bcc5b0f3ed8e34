"""Transports: one per server, shared by the broker, backend and beat store that live there."""

from __future__ import annotations

import ast
from pathlib import Path
from typing import Any

import pytest

from celeriac import Celeriac
from celeriac.exceptions import ConfigurationError
from celeriac.transports import backend_server_url, open_transport
from celeriac.transports.base import Combined, LookupCarriesResults, Transport
from celeriac.transports.redis.transport import RedisCombined
from tests import redis_support

SRC = Path(__file__).resolve().parents[2] / "src" / "celeriac"


class _Counting(Transport):
    """A transport whose parts are stand-ins: counts how often its connections close."""

    def __init__(self) -> None:
        super().__init__("counting://")
        self.closed_connections = 0

    def _open_broker(self, transport_options: dict[str, Any]) -> Any:
        return _Part()

    def _close_connections(self) -> None:
        self.closed_connections += 1


class _Part:
    transport: Transport | None = None

    def close(self) -> None:
        transport, self.transport = self.transport, None
        if transport is not None:
            transport.give_back(self)


def test_the_last_part_given_back_closes_the_connections_once() -> None:
    transport = _Counting()
    first, second = transport.broker(), transport.broker()
    first.close()
    assert transport.closed_connections == 0  # the second still uses them
    second.close()
    second.close()
    assert transport.closed_connections == 1
    with pytest.raises(ConfigurationError, match="closed"):
        transport.broker()


def test_closing_the_transport_closes_every_part_then_the_connections() -> None:
    transport = _Counting()
    parts = [transport.broker(), transport.broker()]
    transport.close()
    assert [p.transport for p in parts] == [None, None]
    assert transport.closed_connections == 1
    unused = _Counting()
    unused.close()
    assert unused.closed_connections == 1


def test_the_sqlite_broker_backend_and_beat_store_share_one_transport(tmp_path: Path) -> None:
    app = Celeriac("t", broker_url=f"sqlite:///{tmp_path}/one.db")
    try:
        transport = app.broker.transport
        assert transport is not None
        assert app.backend.transport is transport and app.beat_store.transport is transport
        combined = app.connections.combined()
        assert (combined.broker, combined.backend) == (app.broker, app.backend)
    finally:
        app.close()
    assert transport.closed


def test_a_backend_in_another_file_has_a_transport_of_its_own(tmp_path: Path) -> None:
    app = Celeriac(
        "t",
        broker_url=f"sqlite:///{tmp_path}/broker.db",
        result_backend=f"sqlite:///{tmp_path}/results.db",
    )
    try:
        assert app.broker.transport is not app.backend.transport
        combined = app.connections.combined()
        assert type(combined) is Combined and not combined.carries_results
    finally:
        app.close()


def test_rpc_rides_on_the_broker_server_or_the_one_it_names() -> None:
    broker = "amqp://guest:guest@127.0.0.1:5672//"
    assert backend_server_url("rpc://", broker) == broker
    assert backend_server_url("rpc://u:p@other:5672/v", broker) == "amqp://u:p@other:5672/v"
    assert backend_server_url("redis://h/1", broker) == "redis://h/1"
    with pytest.raises(ConfigurationError, match=r"rpc:// sends results over the amqp:// broker"):
        backend_server_url("rpc://", "redis://127.0.0.1:6379/0")


@pytest.mark.redis
def test_redis_urls_of_one_database_share_a_transport_and_a_client() -> None:
    prefix = redis_support.new_prefix()
    url = redis_support.url_with_prefix(prefix)
    spelled_otherwise = url.replace("127.0.0.1:6379", "127.0.0.1")  # the default port
    app = Celeriac("t", broker_url=url, result_backend=spelled_otherwise)
    other_db = Celeriac(
        "t", broker_url=url, result_backend=redis_support.url_with_prefix(prefix, db=2)
    )
    try:
        broker, backend = app.broker, app.backend
        assert broker.transport is backend.transport
        assert broker.client is backend.client  # type: ignore[attr-defined]
        assert type(app.connections.combined()) is RedisCombined  # one script for all
        assert other_db.broker.transport is not other_db.backend.transport
        # two databases: results stored with the worker's own look-up, not in the fetch script
        assert type(other_db.connections.combined()) is LookupCarriesResults
        # A transport combines only parts it handed out itself.
        transport = broker.transport
        assert transport is not None
        assert type(transport.combine(broker, other_db.backend)) is LookupCarriesResults
    finally:
        app.close()
        other_db.close()
        redis_support.drop(prefix)


def test_only_the_scheme_map_names_a_concrete_transport() -> None:
    """Outside ``transports/<name>/``, code depends on the interfaces; the map in
    ``transports/__init__.py`` names the packages by string and imports them on demand."""
    technologies = {p.name for p in (SRC / "transports").iterdir() if p.is_dir()}
    assert {"memory", "sqlite", "redis", "amqp"} <= technologies
    offenders = []
    for path in SRC.rglob("*.py"):
        rel = path.relative_to(SRC).as_posix()
        if rel.startswith("transports/") and rel.count("/") >= 2:
            continue  # inside a technology's own package
        for node in ast.walk(ast.parse(path.read_text())):
            names = []
            if isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            elif isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            for name in names:
                parts = name.split(".")
                if parts[:2] == ["celeriac", "transports"] and set(parts[2:3]) & technologies:
                    offenders.append(f"{rel}: {name}")
    assert offenders == []


def test_opening_a_transport_connects_nothing(tmp_path: Path) -> None:
    transport = open_transport(f"sqlite:///{tmp_path}/never.db")
    transport.close()
    assert not (tmp_path / "never.db").exists()
