"""Sending in the caller's transaction (``transaction=``) and after it (``delay_on_commit``)."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import psycopg
import pytest

from celeriac import Celeriac
from celeriac.exceptions import ConfigurationError
from tests.conftest import service_url

pytestmark = pytest.mark.postgres


def test_transaction_needs_a_postgresql_broker_and_its_database(url: str, tmp_path: Path) -> None:
    app = Celeriac(broker_url=f"sqlite:///{tmp_path}/b.db")
    pg = Celeriac(broker_url=url)

    @app.task
    def add(x: int, y: int) -> int:
        return x + y

    other_db = service_url("postgres").rsplit("/", 1)[0] + "/postgres"
    with psycopg.connect(service_url("postgres")) as conn, psycopg.connect(other_db) as other:
        with pytest.raises(ConfigurationError, match="transaction= needs a postgresql:// broker"):
            add.apply_async((1, 2), transaction=conn)
        with pytest.raises(ConfigurationError, match="connection to database 'postgres'"):
            pg.send_task("add", (1, 2), transaction=other)
        pg.send_task("add", (1, 2), queue="in-tx", transaction=conn)
        assert pg.broker.depth("in-tx") == 0  # not committed yet
        conn.commit()
        assert pg.broker.depth("in-tx") == 1
    app.close()
    pg.close()


def test_delay_on_commit_without_django_sends_at_once(tmp_path: Path) -> None:
    app = Celeriac(broker_url=f"sqlite:///{tmp_path}/b.db")

    @app.task
    def add(x: int, y: int) -> int:
        return x + y

    assert add.delay_on_commit(1, 2) is None
    assert add.apply_async_on_commit((3, 4), queue="other") is None
    assert (app.broker.depth("celery"), app.broker.depth("other")) == (1, 1)
    app.close()


DJANGO = """
import django
from django.conf import settings
from django.db import transaction

settings.configure(DATABASES={"default": {"ENGINE": "django.db.backends.sqlite3",
                                          "NAME": "db.sqlite3"}})
django.setup()
from celeriac import Celeriac

app = Celeriac(broker_url="sqlite:///broker.db")

@app.task
def add(x, y):
    return x + y

with transaction.atomic():
    add.delay_on_commit(1, 2)
    inside = app.broker.depth("celery")
try:
    with transaction.atomic():
        add.delay_on_commit(1, 2)
        raise RuntimeError("roll back")
except RuntimeError:
    pass
print(inside, app.broker.depth("celery"))
"""


def test_delay_on_commit_with_django_sends_when_the_transaction_commits(tmp_path: Path) -> None:
    out = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(DJANGO)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert (out.returncode, out.stdout, out.stderr) == (0, "0 1\n", "")
