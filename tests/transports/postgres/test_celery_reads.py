"""What the README says of Celery and our result table: Celery's database backend cannot read
it (it reads its own ``celery_taskmeta``, which stores pickles)."""

from __future__ import annotations

import pytest

from celeriac.backends import create_backend
from celeriac.transports.postgres.connection import parse_url

pytestmark = pytest.mark.postgres


def test_celerys_database_backend_does_not_see_our_results(url: str) -> None:
    pytest.importorskip("sqlalchemy")
    from celery import Celery

    ours = create_backend(url)
    ours.store_result("shared-id", 42, "SUCCESS")
    assert ours.get_meta("shared-id")["result"] == 42
    conninfo, schema = parse_url(url)
    db = conninfo.split("?")[0].replace("postgresql://", "postgresql+psycopg://", 1)
    celery = Celery("peer", backend=f"db+{db}")
    # Its tables in the test's schema (dropped with it), not in the shared database's public one.
    celery.conf.database_table_schemas = {"task": schema, "group": schema}
    try:
        assert celery.AsyncResult("shared-id").state == "PENDING"
    finally:
        celery.backend.ResultSession().close()
        ours.close()
