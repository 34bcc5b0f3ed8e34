"""The outgoing-message record: where a route says AMQP publishes, and the prefork wire form."""

from __future__ import annotations

import pickle

from celeriac.protocol.message import Message
from celeriac.protocol.publication import Publication, Route


def test_a_route_straight_to_a_queue_goes_through_the_default_exchange() -> None:
    assert Route("images").address == ("", "images")
    topic = Route("images", "media", "media.image.png", "topic")
    assert topic.address == ("media", "media.image.png")


def test_a_publication_crosses_the_pipe_as_a_plain_tuple() -> None:
    message = Message({"id": "t1", "task": "t"}, {"priority": 3}, b"[]", "application/json")
    sent = Publication(message, Route("celery", "office", "report"), 3, 1234.5)
    wire = sent.to_wire()
    # only builtins: no class of ours to import or call when the parent unpickles it
    assert type(wire) is tuple
    assert all(type(v) in (dict, bytes, str, int, float, type(None)) for v in wire)
    assert Publication.from_wire(pickle.loads(pickle.dumps(wire))) == sent
    plain = Publication(message, Route("celery"))
    assert Publication.from_wire(plain.to_wire()) == plain
