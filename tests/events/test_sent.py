"""``task_send_sent_event``: the client sends ``task-sent`` with Celery's fields."""

from __future__ import annotations

from typing import Any

from celeriac import Celeriac, group
from celeriac.events import EventReceiver


def test_a_client_sends_task_sent_when_asked() -> None:
    app = Celeriac("sent", broker_url="memory://", task_send_sent_event=True)

    @app.task(name="proj.add")
    def add(x: int, y: int) -> int:
        return x + y

    seen: list[dict[str, Any]] = []
    with EventReceiver(app, {"*": seen.append}) as receiver:
        result = add.apply_async((1, 2), queue="q1")
        assert receiver.capture(limit=1, timeout=5.0) == 1
        [event] = seen
        assert (event["type"], event["uuid"], event["name"]) == ("task-sent", result.id, "proj.add")
        assert (event["args"], event["kwargs"], event["retries"]) == ("(1, 2)", "{}", 0)
        assert (event["queue"], event["exchange"], event["routing_key"]) == ("q1", "", "q1")
        assert event["root_id"] == result.id and event["parent_id"] is None
        group(add.s(1, 1), add.s(2, 2)).apply_async()
        assert receiver.capture(limit=2, timeout=5.0) == 2
        assert [e["args"] for e in seen[1:]] == ["(1, 1)", "(2, 2)"]
    app.conf.task_send_sent_event = False
    with EventReceiver(app, {"*": seen.append}) as receiver:
        add.delay(3, 3)
        assert receiver.capture(timeout=0.3) == 0
    app.close()
