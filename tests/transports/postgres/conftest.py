from __future__ import annotations

import pytest

from tests import postgres_support


@pytest.fixture
def url(request: pytest.FixtureRequest) -> str:
    """A fresh schema on the shared server, dropped afterwards."""
    return postgres_support.postgres_url(request)
