"""Fixtures shared by the Redis transport's tests."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from celeriac.transports.redis.connection import connect
from celeriac.transports.redis.held import HeldConnections
from tests.redis_support import base_url


@pytest.fixture
def held() -> Iterator[HeldConnections]:
    """Held connections over a client of the shared test Redis, closed after the test."""
    target = connect(base_url())
    try:
        yield HeldConnections(target.client)
    finally:
        target.client.close()
