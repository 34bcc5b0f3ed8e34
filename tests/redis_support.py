"""Redis for tests: a dedicated logical DB and a fresh key prefix per use, deleted afterwards.

The Redis server may be shared with other work, so tests never flush anything: every key they
create carries their own prefix, and :func:`drop` deletes exactly those keys.
"""

from __future__ import annotations

import uuid
from urllib.parse import urlsplit

from tests.conftest import service_url

DB = 13


def base_url(db: int = DB) -> str:
    parts = urlsplit(service_url("redis"))
    return parts._replace(path=f"/{db}", query="").geturl()


def new_prefix() -> str:
    return f"celeriac-test-{uuid.uuid4().hex[:12]}:"


def url_with_prefix(prefix: str, db: int = DB) -> str:
    return f"{base_url(db)}?global_keyprefix={prefix}"


def drop(prefix: str, db: int = DB) -> None:
    """Delete every key under ``prefix`` (and the result keys tests wrote without one)."""
    import redis

    client = redis.Redis.from_url(base_url(db))
    try:
        keys = list(client.scan_iter(match=f"{prefix}*", count=1000))
        for i in range(0, len(keys), 500):
            client.delete(*keys[i : i + 500])
    finally:
        client.close()
