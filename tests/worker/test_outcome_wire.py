"""An Outcome crosses from a prefork child as plain tuples, its follow-ups' routes included."""

from __future__ import annotations

import pickle

from celeriac.protocol.message import Message
from celeriac.protocol.publication import Publication, Route
from celeriac.worker.job import Outcome


def test_follow_ups_keep_their_route_across_the_pipe() -> None:
    message = Message({"id": "next", "task": "t"}, {}, b"[]")
    followups = [
        Publication(message, Route("celery")),
        Publication(message, Route("images", "media", "media.image.png", "topic"), 4, 99.0),
    ]
    outcome = Outcome(1, "t1", "t", "SUCCESS", b"{}", followups=followups)
    back = Outcome.from_wire(pickle.loads(pickle.dumps(outcome.to_wire())))
    assert back.followups == followups
