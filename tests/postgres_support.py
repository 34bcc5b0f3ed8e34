"""PostgreSQL for tests: a fresh schema per use (``?schema=`` in the URL), dropped afterwards.

The server is shared with other work, so tests never drop anything but the schemas they made:
every name carries :data:`PREFIX` and a random suffix.
"""

from __future__ import annotations

import uuid

from tests.conftest import service_url

PREFIX = "celeriac_t_"


def new_schema() -> str:
    return f"{PREFIX}{uuid.uuid4().hex[:12]}"


def url_for(schema: str, scheme: str = "postgresql") -> str:
    base = service_url("postgres").split("://", 1)[1]
    sep = "&" if "?" in base else "?"
    return f"{scheme}://{base}{sep}schema={schema}"


def drop(schema: str) -> None:
    """Drop the schema and all it holds (only ever one a test made)."""
    import psycopg

    assert schema.startswith(PREFIX), schema
    with psycopg.connect(service_url("postgres"), autocommit=True) as conn:
        conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')


def postgres_url(request: object) -> str:
    """A new schema's URL, dropped when ``request`` (a pytest request) finishes."""
    schema = new_schema()
    request.addfinalizer(lambda: drop(schema))  # type: ignore[attr-defined]
    return url_for(schema)
