"""A prefork child's lease slot: what it holds and runs, as its supervisor reads it back."""

from __future__ import annotations

from celeriac.brokers.base import Delivery
from celeriac.protocol.message import build_task_message, read_headers
from celeriac.protocol.serializers import default_registry
from celeriac.worker.activity import request_info
from celeriac.worker.inflight import InFlight
from celeriac.worker.job import Job
from celeriac.worker.lease_slots import SLOT_SIZE, LeaseSlots


def _held(args: tuple[object, ...]) -> tuple[LeaseSlots, InFlight, Job]:
    message = build_task_message(
        default_registry, task_name="proj.add", task_id="t-1", args=args, kwargs={"k": 1}
    )
    message.properties["priority"] = 3
    slots = LeaseSlots(2)
    writer = slots.writer(1)
    inflight = InFlight(1)
    writer.attach(inflight)
    [(job_id, _)] = inflight.add([Delivery(message, "q", ("q", "tag", 2), 2)])
    inflight.working_on(job_id, "t-1")
    headers = read_headers(message, default_registry, frozenset({"application/json"}))
    job = Job(job_id, message, headers, "q", 2, "node@h")
    writer.running(job, 1700000000.5, 4242)
    return slots, inflight, job


def test_the_supervisor_reads_the_running_task_as_remote_control_tells_it() -> None:
    slots, inflight, job = _held((2, 3))

    [held] = slots.read(1)
    assert (held.queue, held.tag, held.delivery_count) == ("q", ("q", "tag", 2), 2)
    assert (held.task_id, held.task_name) == ("t-1", "proj.add")
    expected = request_info(
        job.message,
        "q",
        "node@h",
        time_start=1700000000.5,
        pid=4242,
        acknowledged=True,
        redelivered=True,
    )
    assert slots.running(1) == expected
    assert expected["args"] == [2, 3] and expected["kwargs"] == {"k": 1}
    assert expected["delivery_info"]["priority"] == 3
    assert slots.read(0) == [] and slots.running(0) is None

    inflight.settled([job.job_id])
    assert slots.read(1) == [] and slots.running(1) is None


def test_arguments_too_big_for_the_slot_are_left_out_and_the_lease_kept() -> None:
    slots, _, _ = _held(("x" * SLOT_SIZE,))

    [held] = slots.read(1)
    assert held.task_id == "t-1"
    info = slots.running(1)
    assert info is not None
    assert (info["id"], info["name"], info["worker_pid"]) == ("t-1", "proj.add", 4242)
    assert (info["args"], info["kwargs"]) == (None, None)


def test_what_is_held_and_what_runs_change_apart() -> None:
    """A fetch while a task runs rewrites the held list and keeps the running task, and a
    task start keeps the held list (each part of the slot is encoded once per change)."""
    slots, inflight, job = _held((2, 3))
    running = slots.running(1)
    other = build_task_message(default_registry, task_name="proj.mul", task_id="t-2", args=(1,))
    [(other_id, _)] = inflight.add([Delivery(other, "q", ("q", "tag2", 1), 1)])
    inflight.working_on(other_id, "t-2")

    assert [h.task_id for h in slots.read(1)] == ["t-1", "t-2"]
    assert slots.running(1) == running

    inflight.settled([job.job_id])
    assert [h.task_id for h in slots.read(1)] == ["t-2"] and slots.running(1) is None
