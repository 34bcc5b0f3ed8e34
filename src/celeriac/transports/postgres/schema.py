"""The tables, made on first use and upgraded by ``celeriac -A proj db upgrade``.

The schema is a list of numbered SQL files (``sql/NNN_*.sql``, ``{s}`` standing for the schema
name); ``{s}.schema_version`` records how many were applied. A process that finds no
``schema_version`` applies them all: behind a transaction-level advisory lock keyed on the schema
name, so two workers starting together make it once (the second waits, then finds it made). A
process that finds an older version refuses to run and says to upgrade: a new file may change
what the running workers read, so an upgrade is a step a person takes (:func:`upgrade`).
"""

from __future__ import annotations

from importlib import resources
from typing import TYPE_CHECKING, Any

from celeriac.exceptions import ConfigurationError
from celeriac.transports.postgres.connection import sql

if TYPE_CHECKING:
    import psycopg


def migrations() -> list[str]:
    """The SQL files in order (their text)."""
    folder = resources.files("celeriac.transports.postgres") / "sql"
    names = sorted(p.name for p in folder.iterdir() if p.name.endswith(".sql"))
    return [(folder / name).read_text(encoding="utf-8") for name in names]


LATEST = len(migrations())


def version(conn: psycopg.Connection[Any], schema: str) -> int:
    """The applied version (0: no tables yet)."""
    # pg_tables, not to_regclass(): a catalog cache lookup may not yet see a table another
    # session made while we waited for the advisory lock; a query of the catalog does.
    found = conn.execute(
        "SELECT 1 FROM pg_tables WHERE schemaname = %s AND tablename = 'schema_version'",
        (schema,),
    ).fetchone()
    if found is None:
        return 0
    row = conn.execute(sql("SELECT version FROM {s}.schema_version", schema)).fetchone()
    return int(row[0]) if row else 0


def ensure(conn: psycopg.Connection[Any], schema: str) -> None:
    """Make the tables if there are none; refuse an out-of-date or newer schema."""
    have = version(conn, schema)
    if have == 0:
        have = upgrade(conn, schema, only_if_new=True)[1]
    if have < LATEST:
        raise ConfigurationError(
            f"the Celeriac tables in schema {schema!r} are at version {have}, this Celeriac needs "
            f"{LATEST}: run `celeriac -A <app> db upgrade` first"
        )
    if have > LATEST:
        raise ConfigurationError(
            f"the Celeriac tables in schema {schema!r} are at version {have}, newer than this "
            f"Celeriac knows ({LATEST}): upgrade Celeriac"
        )


def upgrade(
    conn: psycopg.Connection[Any], schema: str, *, to: int | None = None, only_if_new: bool = False
) -> tuple[int, int]:
    """Apply the SQL files not applied yet (up to ``to``), in one transaction under the
    schema's advisory lock; ``(version before, version after)``. ``only_if_new``: do nothing
    unless there are no tables at all (first use)."""
    target = LATEST if to is None else to
    with conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(hashtext(%s))", (f"celeriac:{schema}",))
        before = version(conn, schema)  # again, now that we hold the lock
        if only_if_new and before != 0:
            return before, before
        if before == 0:
            conn.execute(f'CREATE SCHEMA IF NOT EXISTS "{schema}"')
            conn.execute(sql("CREATE TABLE {s}.schema_version (version integer NOT NULL)", schema))
            conn.execute(sql("INSERT INTO {s}.schema_version VALUES (0)", schema))
        for text in migrations()[before:target]:
            conn.execute(sql(text, schema))
        after = max(before, target)
        conn.execute(sql("UPDATE {s}.schema_version SET version = %s", schema), (after,))
    return before, after
