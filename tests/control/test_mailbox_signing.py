"""Signed remote control over every transport: a node with a key answers signed commands only,
and its signed replies reach a client with the key."""

from __future__ import annotations

from celeriac.protocol.signing import Keyring
from tests.amqp_support import amqp_vhost  # noqa: F401 - a fixture
from tests.control.test_mailbox_contract import Node, make_mailbox  # noqa: F401 - a fixture

RING = Keyring.of([b"s" * 32])


def test_a_signing_node_answers_only_signed_commands(make_mailbox):  # noqa: F811
    box = make_mailbox()
    box.keyring = RING
    node = Node(box, "signed@test")
    try:
        unsigned = make_mailbox()
        assert unsigned.call("ping", destination=["signed@test"], timeout=1.0) == []
        signed = make_mailbox()
        signed.keyring = RING
        assert signed.call("ping", {"x": 1}, destination=["signed@test"], timeout=10.0) == [
            {"signed@test": {"method": "ping", "arguments": {"x": 1}}}
        ]
        assert [c.method for c in node.seen] == ["ping"]
    finally:
        node.stop()
