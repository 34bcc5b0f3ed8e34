"""The PostgreSQL transport's own promises: URLs and options, the schema made once and upgraded
by ``celeriac db upgrade``, LISTEN/NOTIFY wake-ups and the idle claim rate, connections across
``fork``."""

from __future__ import annotations

import os
import threading
import time
from typing import Any

import psycopg
import pytest
from click.testing import CliRunner

from celeriac import Celeriac
from celeriac.brokers import create_broker
from celeriac.exceptions import ConfigurationError
from celeriac.protocol.message import build_task_message
from celeriac.protocol.publication import Publication, Route
from celeriac.protocol.serializers import default_registry
from celeriac.transports import transport_class
from celeriac.transports.postgres import schema
from celeriac.transports.postgres.broker import PostgresBroker
from celeriac.transports.postgres.connection import parse_url

pytestmark = pytest.mark.postgres


def msg(task_id: str) -> Any:
    return build_task_message(default_registry, task_name="t", task_id=task_id, args=())


def test_url_spellings_name_one_server_and_the_schema_is_checked() -> None:
    base = "postgresql://u@h:5432/db?schema=jobs"
    cls = transport_class(base)
    keys = {cls.server_key(base.replace("postgresql", s, 1)) for s in ("postgres", "db+postgresql")}
    assert keys == {cls.server_key(base)}
    assert parse_url(base) == ("postgresql://u@h:5432/db?connect_timeout=5", "jobs")
    with pytest.raises(ConfigurationError, match="not a plain lower-case SQL name"):
        parse_url("postgresql://u@h/db?schema=Drop;Table")


def test_a_misspelt_option_is_an_error_for_broker_and_beat_store(url: str) -> None:
    app = Celeriac(broker_url=url, broker_transport_options={"visibilty_timeout": 5})
    hint = (
        "unknown broker_transport_options key 'visibilty_timeout' for postgresql://; "
        "did you mean 'visibility_timeout'?"
    )
    with pytest.raises(ConfigurationError) as err:
        app.broker  # noqa: B018
    assert str(err.value) == hint
    with pytest.raises(ConfigurationError) as err:
        app.beat_store  # noqa: B018
    assert str(err.value) == hint


def test_the_options_are_the_ones_the_readme_lists() -> None:
    from celeriac.transports.options import option_names
    from celeriac.transports.postgres.options import PostgresOptions

    assert option_names(PostgresOptions) == [
        "visibility_timeout",
        "polling_interval",
        "dead_letter_max_count",
        "dead_letter_max_age",
    ]
    assert (PostgresOptions().visibility_timeout, PostgresOptions().polling_interval) == (30, 2)


def test_the_tables_are_made_once_when_many_start_together(url: str) -> None:
    conninfo, name = parse_url(url)
    errors: list[BaseException] = []
    go = threading.Barrier(6)

    def start() -> None:
        try:
            with psycopg.connect(conninfo, autocommit=True) as conn:
                go.wait(5)
                schema.ensure(conn, name)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=start) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert errors == []
    with psycopg.connect(conninfo) as conn:
        assert schema.version(conn, name) == schema.LATEST


def test_an_old_schema_is_refused_until_db_upgrade(url: str, tmp_path: Any) -> None:
    conninfo, name = parse_url(url)
    with psycopg.connect(conninfo, autocommit=True) as conn:
        assert schema.upgrade(conn, name, to=1) == (0, 1)
    broker = create_broker(url)
    try:
        with pytest.raises(ConfigurationError, match=r"run `celeriac -A <app> db upgrade` first"):
            broker.depth("q")
    finally:
        broker.close()
    (tmp_path / "dbapp.py").write_text(
        f"from celeriac import Celeriac\napp = Celeriac(broker_url={url!r})\n"
    )
    from celeriac.cli.main import cli

    runner = CliRunner()
    old = os.getcwd()
    os.chdir(tmp_path)
    try:
        out = runner.invoke(cli, ["-A", "dbapp:app", "db", "upgrade"])
        again = runner.invoke(cli, ["-A", "dbapp:app", "db", "upgrade"])
    finally:
        os.chdir(old)
    assert out.exit_code == 0, out.output
    assert out.output.endswith(f"schema {name}: 1 -> {schema.LATEST}\n")
    assert again.output.endswith(f"schema {name}: up to date\n")
    broker = create_broker(url)
    try:
        assert broker.depth("q") == 0
    finally:
        broker.close()


def test_an_idle_fetcher_claims_every_two_seconds_and_a_publish_wakes_it(url: str) -> None:
    broker = create_broker(url)
    assert isinstance(broker, PostgresBroker)
    claims = 0
    real = broker.claim_rows

    def counted(*args: Any) -> Any:
        nonlocal claims
        claims += 1
        return real(*args)

    broker.claim_rows = counted  # type: ignore[method-assign]
    try:
        # As a worker's fetcher asks: every half second.
        start = time.monotonic()
        while time.monotonic() - start < 5.0:
            assert broker.fetch(["idle"], 1, timeout=0.5) == []
        assert claims == 3  # at 0, 2 and 4 s: under one query a second
        other = create_broker(url)
        timer = threading.Timer(0.5, other.publish, [Publication(msg("x"), Route("idle"))])
        start = time.monotonic()
        timer.start()
        [got] = broker.fetch(["idle"], 1, timeout=5.0)
        took = time.monotonic() - start
        timer.join()
        other.close()
        assert got.message.task_id == "x"
        assert took < 1.5  # woken by NOTIFY, not by the 2 s poll
    finally:
        broker.close()


FORK_SCRIPT = """
import gc, os, sys
from celeriac.brokers import create_broker
from celeriac.protocol.message import build_task_message
from celeriac.protocol.publication import Publication, Route
from celeriac.protocol.serializers import default_registry

def msg(i):
    return build_task_message(default_registry, task_name="t", task_id=i, args=())

broker = create_broker(sys.argv[1])
broker.publish(Publication(msg("parent-1"), Route("fork")))
pid = os.fork()
if pid == 0:
    # The child opens its own connection; what it inherited is finalised here, at exit.
    broker.publish(Publication(msg("child"), Route("fork")))
    broker.close()
    gc.collect()
    sys.exit(0)
os.waitpid(pid, 0)
broker.publish(Publication(msg("parent-2"), Route("fork")))  # on the parent's first connection
print(broker.depth("fork"))
"""


def test_a_forked_child_leaves_its_parents_connection_alone(url: str) -> None:
    import subprocess
    import sys

    out = subprocess.run(
        [sys.executable, "-c", FORK_SCRIPT, url], capture_output=True, text=True, timeout=60
    )
    assert (out.returncode, out.stdout, out.stderr) == (0, "3\n", "")


def test_a_row_that_is_no_message_is_dead_lettered_and_the_rest_delivered(url: str) -> None:
    broker = create_broker(url)
    try:
        broker.publish(Publication(msg("good"), Route("bad-rows")))
        conninfo, name = parse_url(url)
        with psycopg.connect(conninfo, autocommit=True) as conn:
            conn.execute(
                f'INSERT INTO "{name}".messages (queue, available_at, headers, properties,'
                " content_type, content_encoding, body)"
                " VALUES ('bad-rows', 0, 'not json', '{}', 'application/json', 'utf-8', '')"
            )
        got = broker.fetch(["bad-rows"], 10, timeout=1)
        assert [d.message.task_id for d in got] == ["good"]
        [dead] = broker.dead_letters()
        assert dead.queue == "bad-rows"
        assert dead.reason.startswith("unreadable message row: headers are not JSON")
        assert broker.depth("bad-rows") == 1  # only the good one, leased
    finally:
        broker.close()
