"""py-amqp connection settings from Celeriac's AMQP URLs (no server needed: the publishing
itself is tested against RabbitMQ in tests/brokers/test_amqp.py)."""

from __future__ import annotations

import math
import ssl

from celeriac._amqp_publish import PublisherPool, connect_params, idle_limit


def test_kombu_style_urls_map_to_py_amqp_arguments() -> None:
    p = connect_params("amqp://u%40x:p%2Fw@rabbit:5673/%2Fprod", {"heartbeat": 20})
    assert p["host"] == "rabbit:5673"
    assert (p["userid"], p["password"]) == ("u@x", "p/w")
    assert p["virtual_host"] == "/prod"
    # no heartbeats (nothing answers them between calls): replaced after half the interval idle
    assert p["heartbeat"] == 0 and p["connect_timeout"] == 10.0 and p["login_method"] == "PLAIN"
    assert connect_params("amqp://h/?connect_timeout=3")["connect_timeout"] == 3.0
    assert "ssl" not in p
    for url in ("amqp://localhost", "amqp://localhost/", "amqp://localhost//"):
        q = connect_params(url)
        assert (q["host"], q["virtual_host"], q["userid"]) == ("localhost:5672", "/", "guest")
    assert idle_limit("amqp://h/", {"heartbeat": 20}) == 10.0
    assert idle_limit("amqp://h/?heartbeat=30", {"heartbeat": 20}) == 15.0
    assert idle_limit("amqp://h/?heartbeat=0") == math.inf
    assert idle_limit("amqp://h/") == 30.0


def test_amqps_urls_carry_their_tls_files() -> None:
    p = connect_params("amqps://h/v?cafile=/ca.pem&certfile=/c.pem&keyfile=/k.pem")
    assert p["host"] == "h:5671"
    assert p["ssl"] == {
        "server_hostname": "h",
        "cert_reqs": ssl.CERT_REQUIRED,
        "ca_certs": "/ca.pem",
        "certfile": "/c.pem",
        "keyfile": "/k.pem",
    }
    # no host name either: py-amqp would check it, and refuse CERT_NONE with the check on
    assert connect_params("amqps://h/?no_verify_ssl=1")["ssl"] == {"cert_reqs": ssl.CERT_NONE}


def test_the_pool_lends_at_most_its_limit_and_none_on_an_event_loop() -> None:
    import asyncio

    pool = PublisherPool("amqp://localhost", None, 2)
    a, b = pool.borrow(), pool.borrow()
    assert a is not None and b is not None and a is not b
    assert pool.borrow() is None  # both lent: the caller publishes the other way
    pool.give_back(a)
    assert pool.borrow() is a  # no connection was opened: nothing to close

    async def on_a_loop() -> object:
        return pool.borrow()

    pool.give_back(a)
    assert asyncio.run(on_a_loop()) is None
    pool.close()
    assert pool.borrow() is None and pool.idle == 0
    assert PublisherPool("amqp://localhost", None, 0).borrow() is None
