"""``sqlite://`` transport options: a misspelt one is an error from the broker, the beat store
and the result backend alike; kombu's names for its SQLAlchemy transport are accepted."""

from __future__ import annotations

from pathlib import Path

import pytest

from celeriac import Celeriac
from celeriac.exceptions import ConfigurationError
from celeriac.transports.sqlite.broker import SQLiteBroker
from celeriac.transports.sqlite.options import SQLiteOptions


@pytest.fixture
def url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path}/b.db"


def test_a_misspelt_option_is_an_error_for_the_broker_and_the_beat_store(url: str) -> None:
    app = Celeriac(broker_url=url, broker_transport_options={"polling_intervall": 1})
    hint = (
        "unknown broker_transport_options key 'polling_intervall' for sqlite://; "
        "did you mean 'polling_interval'?"
    )
    with pytest.raises(ConfigurationError) as err:
        app.broker  # noqa: B018
    assert str(err.value) == hint
    with pytest.raises(ConfigurationError) as err:
        app.beat_store  # noqa: B018 - opening it parses the options
    assert str(err.value) == hint


def test_sqlite_results_take_no_options(url: str) -> None:
    app = Celeriac(broker_url=url, result_backend_transport_options={"polling_interval": 1})
    with pytest.raises(ConfigurationError, match="'polling_interval' for sqlite://; sqlite://"):
        app.backend  # noqa: B018


def test_kombu_only_options_are_accepted(url: str) -> None:
    options = {"queue_tablename": "kombu_queue", "interval_max": 2, "visibility_timeout": 9}
    app = Celeriac(broker_url=url, broker_transport_options=options)
    assert app.broker.options == SQLiteOptions(visibility_timeout=9.0)
    assert app.beat_store.options == SQLiteOptions(visibility_timeout=9.0)  # type: ignore[attr-defined]


def test_a_bad_value_is_an_error_naming_the_key(url: str) -> None:
    app = Celeriac(broker_url=url, broker_transport_options={"polling_interval": [1]})
    with pytest.raises(ConfigurationError, match="'polling_interval' for sqlite:// must be"):
        app.broker  # noqa: B018


def test_defaults_are_what_they_were(url: str) -> None:
    broker = Celeriac(broker_url=url).broker
    assert isinstance(broker, SQLiteBroker)
    assert (broker.visibility_timeout, broker.options.polling_interval) == (30.0, 0.005)
    given = {"visibility_timeout": "2", "polling_interval": 0.5}
    broker = Celeriac(broker_url=url, broker_transport_options=given).broker
    assert (broker.visibility_timeout, broker.options.polling_interval) == (2.0, 0.5)
