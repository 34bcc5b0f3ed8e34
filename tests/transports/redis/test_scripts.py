"""scripts.execute and scripts.evalsha: commands sent straight on a held connection.

``execute`` skips redis-py's per-command dispatch on a client that holds its connection; these
tests show what it keeps: the reply, the connection, a retry on a new connection when the
server closed the old one, an unread reply never left for the next command, redis-py's own
path for a pooled client, and a script Redis lost loaded again.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import redis

from celeriac.transports.redis.connection import connect
from celeriac.transports.redis.held import HeldConnections
from celeriac.transports.redis.scripts import evalsha, execute
from tests import redis_support
from tests.redis_support import base_url, new_prefix

pytestmark = pytest.mark.redis


@pytest.fixture
def key() -> Iterator[str]:
    name = f"{new_prefix()}k"
    yield name
    cleaner = redis.Redis.from_url(base_url())
    try:
        cleaner.delete(name)
    finally:
        cleaner.close()


def _no_dispatch(monkeypatch: pytest.MonkeyPatch) -> None:
    def refused(self: redis.Redis, *args: Any, **options: Any) -> Any:
        raise AssertionError(f"went through redis-py's dispatch: {args[:1]}")

    monkeypatch.setattr(redis.Redis, "execute_command", refused)


def test_a_held_client_s_command_goes_straight_on_its_connection(
    held: HeldConnections, key: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    with held.command() as client:
        first = client.client_id()
    _no_dispatch(monkeypatch)
    with held.command() as client:
        assert execute(client, "SET", key, "v", "EX", 60) == b"OK"
        assert execute(client, "GET", key) == b"v"
        assert execute(client, "MGET", key, f"{key}-none") == [b"v", None]
        assert execute(client, "CLIENT", "ID") == first  # the connection the thread holds


def test_a_connection_the_server_closed_is_retried_on_a_new_one(
    held: HeldConnections, key: str
) -> None:
    with held.command() as client:
        execute(client, "SET", key, "kept", "EX", 60)
        first = client.client_id()
    killer = redis.Redis.from_url(base_url())
    try:
        assert killer.client_kill_filter(_id=str(first)) == 1
    finally:
        killer.close()
    with held.command() as client:
        assert execute(client, "GET", key) == b"kept"  # the connection's retry policy
        again = client.client_id()
    assert again != first


def test_an_interruption_between_send_and_read_leaves_nothing_for_the_next(
    held: HeldConnections, key: str
) -> None:
    with held.command() as client:
        execute(client, "SET", key, "the interrupted command's reply", "EX", 60)
        first = client.client_id()
        conn: Any = client.connection

    def interrupted(*args: Any, **kwargs: Any) -> Any:
        # As a soft time limit (an asynchronous exception) landing after the send
        del conn.read_response
        raise KeyboardInterrupt

    conn.read_response = interrupted
    with pytest.raises(KeyboardInterrupt), held.command() as client:
        execute(client, "GET", key)
    with held.command() as client:
        assert execute(client, "ECHO", "mine") == b"mine"  # not the GET's reply, left unread
        assert client.client_id() != first


def test_an_error_reply_is_raised_and_keeps_the_connection(held: HeldConnections, key: str) -> None:
    with held.command() as client:
        first = client.client_id()
        execute(client, "RPUSH", key, "x")
    with pytest.raises(redis.ResponseError, match="WRONGTYPE"), held.command() as client:
        execute(client, "GET", key)
    with held.command() as client:
        assert client.client_id() == first


def test_a_pooled_client_goes_through_redis_py(key: str) -> None:
    client = redis.Redis.from_url(base_url())
    try:
        assert client.connection is None
        assert execute(client, "SET", key, "pooled", "EX", 60) is True  # redis-py's callback
        assert execute(client, "GET", key) == b"pooled"
    finally:
        client.close()


def test_a_script_redis_lost_is_loaded_again(tmp_path) -> None:
    server = redis_support.PrivateRedis(tmp_path)  # a private one: SCRIPT FLUSH is ours alone
    server.start()
    target = connect(server.url)
    held = HeldConnections(target.client)
    script = target.client.register_script("return {KEYS[1], ARGV[1]}")
    try:
        with held.command() as client:
            assert evalsha(client, script, ["a"], ["k"]) == [b"k", b"a"]
            client.script_flush()  # as after a restart of Redis
            assert evalsha(client, script, ["b"], ["k"]) == [b"k", b"b"]
            assert client.script_exists(script.sha) == [True]
    finally:
        target.client.close()
        server.stop()
