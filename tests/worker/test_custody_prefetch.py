"""A prefork child that dies holding messages it leased ahead: only the running one is charged."""

from __future__ import annotations

from typing import Any

from celeriac import Celeriac
from celeriac.brokers.base import Delivery
from celeriac.protocol.message import build_task_message, read_headers
from celeriac.protocol.serializers import default_registry
from celeriac.worker.custody import Custody, Death
from celeriac.worker.inflight import InFlight
from celeriac.worker.job import Job


class RecordingBroker:
    leases_follow_connection = False

    def __init__(self) -> None:
        self.requeued: list[tuple[str | None, bool]] = []

    def requeue(self, delivery: Delivery, *, count: bool = True, **_: Any) -> None:
        self.requeued.append((delivery.message.task_id, count))


def test_a_crashed_child_charges_its_running_task_and_returns_the_rest_uncharged() -> None:
    app = Celeriac("custody", broker_url="memory://")
    custody = Custody(app, 1)
    broker = RecordingBroker()
    custody._broker = broker  # type: ignore[assignment]
    inflight = InFlight(4)
    writer = custody.writer(0)
    writer.attach(inflight)
    messages = [
        build_task_message(default_registry, task_name="proj.t", task_id=f"t-{i}") for i in range(3)
    ]
    held = inflight.add([Delivery(m, "q", ("q", i), 1) for i, m in enumerate(messages)])
    for job_id, delivery in held:
        inflight.working_on(job_id, str(delivery.message.task_id))
    job_id, delivery = held[1]  # the second of the batch runs when the child dies
    headers = read_headers(delivery.message, default_registry, frozenset({"application/json"}))
    writer.running(Job(job_id, delivery.message, headers, "q", 1, "node@h"), 1.0, 42)

    assert custody.child_died(0, Death.CRASHED, "signal 9") == 3
    assert sorted(broker.requeued) == [("t-0", False), ("t-1", True), ("t-2", False)]
    app.close()
