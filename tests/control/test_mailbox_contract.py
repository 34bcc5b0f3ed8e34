"""The mailbox contract, run over every transport: what a node and a client see."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from celeriac.control.mailbox import Mailbox
from celeriac.transports import transport_class
from tests import amqp_support, postgres_support, redis_support
from tests.amqp_support import amqp_vhost  # noqa: F401 - a fixture

MakeMailbox = Callable[[], Mailbox]


@pytest.fixture(
    params=[
        "memory",
        "sqlite",
        pytest.param("redis", marks=pytest.mark.redis),
        pytest.param("amqp", marks=pytest.mark.amqp),
        pytest.param("postgres", marks=pytest.mark.postgres),
    ]
)
def make_mailbox(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[MakeMailbox]:
    url = f"memory://{tmp_path.name}" if request.param == "memory" else ""
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path}/m.db"
    elif request.param == "amqp":
        url = amqp_support.url_for(request.getfixturevalue("amqp_vhost"))
    elif request.param == "redis":
        url = redis_support.url_with_prefix(prefix := redis_support.new_prefix())
        request.addfinalizer(lambda: redis_support.drop(prefix))
    elif request.param == "postgres":
        url = postgres_support.postgres_url(request)
    made: list[Mailbox] = []

    def make() -> Mailbox:
        box = transport_class(url)(url).mailbox()
        made.append(box)
        return box

    yield make
    for box in made:
        box.close()


class Node:
    """A node answering every command with what it was and its arguments."""

    def __init__(self, box: Mailbox, name: str) -> None:
        self.box, self.seen = box, []  # type: list[Command]
        box.listen(name)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            for cmd in self.box.receive(0.1):
                self.seen.append(cmd)
                self.box.reply(cmd, {"method": cmd.method, "arguments": cmd.arguments})

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)


@pytest.fixture
def nodes(make_mailbox: MakeMailbox) -> Iterator[list[Node]]:
    made = [Node(make_mailbox(), f"n{i}@test") for i in (1, 2)]
    yield made
    for node in made:
        node.stop()


def test_every_node_replies_to_a_broadcast(make_mailbox, nodes):
    client = make_mailbox()
    replies = client.call("ping", {"x": 1}, timeout=1.5, limit=2)
    assert sorted(replies, key=str) == [
        {"n1@test": {"method": "ping", "arguments": {"x": 1}}},
        {"n2@test": {"method": "ping", "arguments": {"x": 1}}},
    ]


def test_a_destination_reaches_only_the_nodes_named_and_limits_the_wait(make_mailbox, nodes):
    client = make_mailbox()
    started = time.monotonic()
    replies = client.call("ping", destination=["n2@test"], timeout=5.0)
    assert replies == [{"n2@test": {"method": "ping", "arguments": {}}}]
    assert time.monotonic() - started < 4.0  # one reply was all it waited for
    assert [c.method for c in nodes[0].seen] == []


def test_an_expired_command_is_dropped_and_a_cast_gets_no_reply(make_mailbox, nodes):
    client = make_mailbox()
    assert client.call("stale", timeout=0.5, expires=-1.0) == []
    assert client.call("cast", reply=False) == []
    client.call("ping", timeout=1.5, limit=2)  # the cast went out before this one
    for node in nodes:
        assert [c.method for c in node.seen] == ["cast", "ping"]
        assert node.seen[0].reply_to is None
