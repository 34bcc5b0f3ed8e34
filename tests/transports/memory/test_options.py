"""``memory://`` transport options: a misspelt one is an error from the broker, the beat store
and the result backend alike; kombu's names for its memory transport are accepted."""

from __future__ import annotations

import pytest

from celeriac import Celeriac
from celeriac.exceptions import ConfigurationError
from celeriac.transports.memory.broker import MemoryBroker
from celeriac.transports.memory.options import MemoryOptions

URL = "memory://"


def test_a_misspelt_option_is_an_error_for_the_broker_and_the_beat_store() -> None:
    app = Celeriac(broker_url=URL, broker_transport_options={"visiblity_timeout": 5})
    hint = (
        "unknown broker_transport_options key 'visiblity_timeout' for memory://; "
        "did you mean 'visibility_timeout'?"
    )
    with pytest.raises(ConfigurationError) as err:
        app.broker  # noqa: B018
    assert str(err.value) == hint
    with pytest.raises(ConfigurationError) as err:
        app.beat_store  # noqa: B018 - opening it parses the options
    assert str(err.value) == hint


def test_memory_results_take_no_options() -> None:
    app = Celeriac(broker_url=URL, result_backend_transport_options={"global_keyprefix": "x"})
    with pytest.raises(ConfigurationError, match="'global_keyprefix' for memory://"):
        app.backend  # noqa: B018


def test_kombu_only_options_are_accepted() -> None:
    app = Celeriac(
        broker_url=URL, broker_transport_options={"polling_interval": 1, "max_retries": 3}
    )
    assert app.broker.options == MemoryOptions()
    assert app.beat_store.options == MemoryOptions()  # type: ignore[attr-defined]


def test_a_bad_value_is_an_error_naming_the_key() -> None:
    app = Celeriac(broker_url=URL, broker_transport_options={"visibility_timeout": "long"})
    with pytest.raises(ConfigurationError, match="'visibility_timeout' for memory:// must be"):
        app.broker  # noqa: B018


def test_defaults_are_what_they_were() -> None:
    broker = Celeriac(broker_url=URL).broker
    assert isinstance(broker, MemoryBroker)
    assert broker.visibility_timeout == 30.0
    given = Celeriac(broker_url=URL, broker_transport_options={"visibility_timeout": 2}).broker
    assert given.visibility_timeout == 2.0
