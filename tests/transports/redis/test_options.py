"""Redis transport options: a misspelt one is an error from the broker, the beat store and the
result backend alike; kombu's (and Celery's result backend's) names are accepted; the options
reach redis-py as before."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from celeriac import Celeriac
from celeriac.exceptions import ConfigurationError
from celeriac.transports.redis.backend import RedisBackend
from celeriac.transports.redis.broker import RedisBroker
from celeriac.transports.redis.connection import connect
from celeriac.transports.redis.options import RedisConnectionOptions, RedisOptions
from tests import redis_support

pytestmark = pytest.mark.redis


@pytest.fixture
def url() -> Iterator[str]:
    prefix = redis_support.new_prefix()
    yield redis_support.url_with_prefix(prefix)
    redis_support.drop(prefix)


def test_a_misspelt_option_is_an_error_for_the_broker_and_the_beat_store(url: str) -> None:
    app = Celeriac(broker_url=url, broker_transport_options={"visiblity_timeout": 60})
    hint = (
        "unknown broker_transport_options key 'visiblity_timeout' for redis://; "
        "did you mean 'visibility_timeout'?"
    )
    with pytest.raises(ConfigurationError) as err:
        app.broker  # noqa: B018
    assert str(err.value) == hint
    with pytest.raises(ConfigurationError) as err:
        app.beat_store  # noqa: B018 - opening it parses the options
    assert str(err.value) == hint


def test_a_misspelt_option_is_an_error_for_the_result_backend(url: str) -> None:
    app = Celeriac(
        broker_url="memory://",
        result_backend=url,
        result_backend_transport_options={"global_key_prefix": "x"},
    )
    with pytest.raises(ConfigurationError) as err:
        app.backend  # noqa: B018
    assert str(err.value) == (
        "unknown result_backend_transport_options key 'global_key_prefix' for redis://; "
        "did you mean 'global_keyprefix'?"
    )


def test_the_result_backend_refuses_options_only_the_broker_reads(url: str) -> None:
    options = {"delayed_delivery": "queue"}
    app = Celeriac(
        broker_url="memory://", result_backend=url, result_backend_transport_options=options
    )
    with pytest.raises(ConfigurationError, match="'delayed_delivery' for redis://"):
        app.backend  # noqa: B018


def test_kombu_only_options_are_accepted(url: str) -> None:
    kombu = {"fanout_prefix": True, "fanout_patterns": True, "priority_steps": [0, 3, 6, 9]}
    app = Celeriac(
        broker_url=url,
        broker_transport_options={**kombu, "max_connections": 20, "socket_timeout": 4},
        result_backend=url,
        # Celery's docs show visibility_timeout here; retry_policy is its backend's own
        result_backend_transport_options={"visibility_timeout": 60, "retry_policy": {}},
    )
    try:
        assert app.broker.options == RedisOptions(socket_timeout=4.0)
        assert app.beat_store.options == RedisOptions(socket_timeout=4.0)  # type: ignore[attr-defined]
        assert isinstance(app.backend, RedisBackend)
        assert app.backend.client.connection_pool.connection_kwargs["socket_timeout"] == 10.0
    finally:
        app.broker.close()
        app.backend.close()


def test_a_bad_value_is_an_error_naming_the_key(url: str) -> None:
    for key, value in [("socket_timeout", "soon"), ("delayed_delivery", "worker")]:
        app = Celeriac(broker_url=url, broker_transport_options={key: value})
        with pytest.raises(ConfigurationError, match=f"'{key}' for redis:// must be"):
            app.broker  # noqa: B018


def test_defaults_are_what_they_were(url: str) -> None:
    broker = Celeriac(broker_url=url).broker
    assert isinstance(broker, RedisBroker)
    try:
        assert broker.visibility_timeout == 30.0
        assert (broker.polling_interval, broker.sweep_interval) == (0.1, 1.0)
        assert broker.options.celery_visibility_timeout == 3600.0
        assert not broker.delay_in_broker  # the eta header; parked on fetch
        assert broker.publish_timeout == 5.0
        kwargs = broker.client.connection_pool.connection_kwargs
        assert (kwargs["socket_timeout"], kwargs["socket_connect_timeout"]) == (10.0, 5.0)
        assert (kwargs["health_check_interval"], kwargs["socket_keepalive"]) == (25.0, True)
        assert (broker.options.max_retries, broker.options.retry_cap) == (8, 2.0)
    finally:
        broker.close()


def test_given_options_reach_the_broker_and_redis_py(url: str) -> None:
    options = {
        "visibility_timeout": 0.5,
        "polling_interval": 60,
        "celery_visibility_timeout": 0,
        "delayed_delivery": "queue",
        "socket_timeout": "3",
        "socket_keepalive": False,
        "publish_timeout": 2,
    }
    broker = Celeriac(broker_url=url, broker_transport_options=options).broker
    assert isinstance(broker, RedisBroker)
    try:
        # the sweep's default follows the lease; the polling interval is capped at 5 s
        assert (broker.sweep_interval, broker.polling_interval) == (0.25, 5.0)
        assert broker.options.celery_visibility_timeout == 0.0
        assert not broker.delay_in_broker
        assert broker.publish_timeout == 2.0
        kwargs = broker.client.connection_pool.connection_kwargs
        assert (kwargs["socket_timeout"], kwargs["socket_keepalive"]) == (3.0, False)
    finally:
        broker.close()


def test_the_key_prefix_option_wins_over_the_urls() -> None:
    url = redis_support.url_with_prefix("from-url:")
    assert connect(url).prefix == "from-url:"
    assert connect(url, RedisConnectionOptions(global_keyprefix="opt:")).prefix == "opt:"
    assert connect(url, RedisConnectionOptions(global_keyprefix="")).prefix == ""
    assert connect(redis_support.base_url()).prefix == ""
