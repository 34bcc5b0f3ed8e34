"""What ``celeriac -A proj db upgrade`` does: bring a database's Celeriac tables up to date."""

from __future__ import annotations

from dataclasses import dataclass

from celeriac.exceptions import BrokerError
from celeriac.transports.postgres import schema
from celeriac.transports.postgres.connection import parse_url
from celeriac.urls import redact


@dataclass(frozen=True, slots=True)
class Upgraded:
    url: str
    schema: str
    before: int
    after: int


def upgrade(url: str) -> Upgraded:
    """Apply the schema files not yet applied in ``url``'s schema (making it when missing)."""
    import psycopg

    conninfo, name = parse_url(url)
    try:
        with psycopg.connect(conninfo, autocommit=True) as conn:
            before, after = schema.upgrade(conn, name)
    except psycopg.Error as exc:
        raise BrokerError(f"upgrading {redact(url)}: {exc}") from exc
    return Upgraded(redact(url), name, before, after)
