"""AMQP transport options: a misspelt one is an error; kombu's names for its py-amqp transport
are accepted; the URL's query parameters win over the options, as before."""

from __future__ import annotations

import pytest

from celeriac import Celeriac
from celeriac.exceptions import ConfigurationError
from celeriac.transports.amqp.broker import AMQPBroker
from celeriac.transports.amqp.options import AMQPOptions
from celeriac.transports.amqp.urls import connect_params
from tests import amqp_support
from tests.amqp_support import amqp_vhost  # noqa: F401 - a fixture

URL = "amqp://guest:guest@127.0.0.1:5672//"


def test_a_misspelt_option_is_an_error() -> None:
    # raised before anything connects
    app = Celeriac(broker_url=URL, broker_transport_options={"publish_timout": 5})
    with pytest.raises(ConfigurationError) as err:
        app.broker  # noqa: B018
    assert str(err.value) == (
        "unknown broker_transport_options key 'publish_timout' for amqp://; "
        "did you mean 'publish_timeout'?"
    )


def test_rpc_results_take_no_options() -> None:
    app = Celeriac(
        broker_url=URL,
        result_backend="rpc://",
        result_backend_transport_options={"heartbeat": 10},
    )
    try:
        with pytest.raises(ConfigurationError, match="'heartbeat' for rpc://; rpc:// takes none"):
            app.backend  # noqa: B018
    finally:
        app.close()


def test_a_bad_value_is_an_error_naming_the_key() -> None:
    for key, value in [("queue_type", "stream"), ("max_priority", "high"), ("heartbeat", "x")]:
        app = Celeriac(broker_url=URL, broker_transport_options={key: value})
        with pytest.raises(ConfigurationError, match=f"'{key}' for amqp:// must be"):
            app.broker  # noqa: B018


@pytest.mark.amqp
def test_kombu_only_options_are_accepted_and_defaults_are_what_they_were(
    amqp_vhost: str,  # noqa: F811 - the fixture imported above
) -> None:
    url = amqp_support.url_for(amqp_vhost)
    kombu = {"confirm_publish": True, "client_properties": {"x": 1}, "interval_start": 0}
    broker = Celeriac(broker_url=url, broker_transport_options=kombu).broker
    assert isinstance(broker, AMQPBroker)
    try:
        assert broker.options == AMQPOptions()
        assert (broker.visibility_timeout, broker.max_priority, broker.queue_type) == (
            30.0,
            None,
            "classic",
        )
        assert (broker.publish_timeout, broker.dead_letter_queue) == (10.0, "celeriac.dead")
        assert broker.confirm_publish is True
        params = broker.link.params
        assert (params["heartbeat"], params["connect_timeout"]) == (60, 10.0)
    finally:
        broker.close()


@pytest.mark.amqp
def test_given_options_reach_the_broker(amqp_vhost: str) -> None:  # noqa: F811
    options = {
        "max_priority": "10",
        "queue_type": "quorum",
        "publish_timeout": 5,
        "dead_letter_queue": "dlq",
        "publish_connections": 0,  # our old option: accepted, ignored
        "confirm_publish": False,
        "heartbeat": 20,
    }
    url = amqp_support.url_for(amqp_vhost)
    broker = Celeriac(broker_url=url, broker_transport_options=options).broker
    assert isinstance(broker, AMQPBroker)
    try:
        assert broker.options.max_priority == 10
        assert broker.max_priority is None  # quorum queues ignore priorities
        assert (broker.queue_type, broker.publish_timeout) == ("quorum", 5.0)
        assert broker.dead_letter_queue == "dlq"
        assert broker.confirm_publish is False
        assert broker.link.params["heartbeat"] == 20
    finally:
        broker.close()


def test_the_urls_heartbeat_and_timeout_win_over_the_options() -> None:
    options = AMQPOptions(heartbeat=20, connect_timeout=3)
    params = connect_params(URL, options)
    assert (params["heartbeat"], params["connect_timeout"]) == (20, 3.0)
    params = connect_params(URL + "?heartbeat=5&timeout=7", options)
    assert (params["heartbeat"], params["connect_timeout"]) == (5, 7.0)
    assert connect_params(URL + "?connect_timeout=4", options)["connect_timeout"] == 4.0
    # publishing connections ask for no heartbeats (nothing answers them between calls)
    assert connect_params(URL + "?heartbeat=5", options, heartbeat=False)["heartbeat"] == 0
