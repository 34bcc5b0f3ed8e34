"""The dispatcher's fields and batching, the receiver's handlers, the cluster state (memory)."""

from __future__ import annotations

import os
import time

from celeriac.events import EventDispatcher, EventReceiver, State
from celeriac.events.dispatcher import BUFFER_LIMIT, FLUSH_EVERY
from celeriac.transports import EventConfig
from celeriac.transports.memory.transport import MemoryTransport


def _pair() -> tuple[MemoryTransport, EventDispatcher]:
    transport = MemoryTransport("memory://")
    return transport, EventDispatcher(transport.events(EventConfig()), "n1@h")


def test_worker_events_go_at_once_with_celerys_common_fields() -> None:
    transport, dispatcher = _pair()
    sub = transport.events().subscribe(["worker.heartbeat"])
    dispatcher.send("worker-heartbeat", freq=2.0, active=1)
    [event] = sub.receive(1.0)
    assert set(event) == {
        "freq",
        "active",
        "hostname",
        "utcoffset",
        "pid",
        "clock",
        "timestamp",
        "type",
    }
    assert (event["type"], event["hostname"], event["pid"], event["clock"]) == (
        "worker-heartbeat",
        "n1@h",
        os.getpid(),
        1,
    )
    transport.close()


def test_task_events_travel_as_task_multi_batches() -> None:
    transport, dispatcher = _pair()
    multi = transport.events().subscribe(["task.multi"])
    started = time.monotonic()
    dispatcher.send("task-received", uuid="a")
    dispatcher.send("task-started", uuid="a")
    got = multi.receive(2.0)
    # Both in one message, flushed by the timer, not one message per event.
    assert [(e["type"], e["clock"]) for e in got] == [("task-received", 1), ("task-started", 2)]
    assert FLUSH_EVERY * 0.9 <= time.monotonic() - started < 1.0
    # A full buffer goes at once, without waiting for the timer.
    for i in range(BUFFER_LIMIT):
        dispatcher.send("task-succeeded", uuid=str(i))
    assert len(multi.receive(0.0)) == BUFFER_LIMIT
    dispatcher.send("task-failed", uuid="b")
    dispatcher.close()  # flushes what waits
    assert [e["uuid"] for e in multi.receive(1.0)] == ["b"]
    assert (dispatcher.sent, dispatcher.dropped) == (BUFFER_LIMIT + 3, 0)
    transport.close()


def test_receiver_handlers_and_cluster_state() -> None:
    transport, dispatcher = _pair()
    state = State()
    done: list[str] = []

    def succeeded(event: dict[str, object]) -> None:
        done.append(str(event["uuid"]))
        state.event(event)

    receiver = EventReceiver(transport.events(), {"task-succeeded": succeeded, "*": state.event})
    dispatcher.send("worker-online", freq=2.0, active=0, processed=0)
    dispatcher.send("task-received", uuid="t1", name="proj.add", args="(1, 2)")
    dispatcher.send("task-succeeded", uuid="t1", result="3", runtime=0.01)
    dispatcher.send("task-sent", uuid="t1", name="proj.add")  # late: SUCCESS stays
    dispatcher.flush()
    assert receiver.capture(limit=4, timeout=5.0) == 4
    assert done == ["t1"]
    task = state.tasks["t1"]
    assert (task.state, task.name, task.worker, task.args, task.runtime) == (
        "SUCCESS",
        "proj.add",
        "n1@h",
        "(1, 2)",
        0.01,
    )
    assert task.result == "3"
    worker = state.workers["n1@h"]
    assert worker.alive() and not worker.alive(now=time.time() + 4.1)
    dispatcher.send("worker-offline", freq=2.0, active=0, processed=1)
    assert receiver.capture(limit=1, timeout=5.0) == 1
    assert not worker.alive() and worker.processed == 1
    receiver.close()
    transport.close()
