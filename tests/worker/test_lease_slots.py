"""A prefork child's lease slot: what it holds and runs, as its supervisor reads it back."""

from __future__ import annotations

import threading

from celeriac.brokers.base import Delivery
from celeriac.protocol.message import build_task_message, read_headers
from celeriac.protocol.serializers import default_registry
from celeriac.worker.activity import request_info
from celeriac.worker.inflight import InFlight
from celeriac.worker.job import Job
from celeriac.worker.lease_slots import SLOT_SIZE, LeaseSlots, _encode


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


def test_a_child_killed_in_the_middle_of_a_write_leaves_its_last_complete_copy() -> None:
    """The supervisor gives back what a dead child held at once; a child SIGKILLed between the
    two steps of a write left a slot that read as empty, and those leases had to lapse first."""
    slots, _, _ = _held((2, 3))
    [held] = slots.read(1)
    # What a write that never finished leaves: the sequence odd, the other copy half written.
    seq = slots._seq[1] + 1
    slots._seq[1] = seq
    other = 2 + (seq // 2 + 1) % 2
    slots._data.write(other * SLOT_SIZE, b"\x80\x05half a pickle")
    slots._len[other] = 15

    assert slots.read(1) == [held]
    assert slots.running(1) is not None and slots.running(1)["id"] == "t-1"
    assert slots.read(0) == []  # the other child's slot is untouched
    slots.clear(1)
    assert (slots.read(1), slots.running(1)) == ([], None)


def test_writes_alternate_copies_and_the_reader_follows_the_latest() -> None:
    slots = LeaseSlots(1)
    one = _encode([("q", "tag", 1, "t-1", "proj.add")], None)
    for n in range(5):
        slots._write(0, one if n % 2 == 0 else b"")
        assert slots._seq[0] == 2 * (n + 1)
        assert [h.tag for h in slots.read(0)] == (["tag"] if n % 2 == 0 else [])


def test_a_reader_racing_a_writer_only_ever_sees_whole_writes() -> None:
    slots = LeaseSlots(1)
    payloads = [[(f"q{n}", f"tag{n}", n, f"t-{n}", "proj.add")] * (n + 1) for n in range(3)]
    encoded = [_encode(p, None) for p in payloads]
    expected = [[], *([h[1] for h in p] for p in payloads)]
    reading, done = threading.Event(), threading.Event()

    def write() -> None:
        reading.wait(10)  # the reader is in its loop: the two overlap
        for n in range(20000):
            slots._write(0, encoded[n % 3])
        done.set()

    writer = threading.Thread(target=write)
    writer.start()
    while not done.is_set():
        assert [h.tag for h in slots.read(0)] in expected
        reading.set()
    writer.join()
    assert [h.tag for h in slots.read(0)] == expected[(20000 - 1) % 3 + 1]


def test_a_copy_that_does_not_load_is_read_again_not_raised() -> None:
    """A torn read (weakly ordered memory) must not end the supervisor's renewal thread."""
    slots = LeaseSlots(1)
    slots._write(0, _encode([("q", "tag", 1, "t-1", "proj.add")], None))
    current = (slots._seq[0] // 2) % 2
    slots._data.write(current * SLOT_SIZE, b"\x80\x05torn")
    slots._len[current] = 7
    assert (slots.read(0), slots.running(0)) == ([], None)
    slots._write(0, _encode([("q", "tag2", 1, "t-2", "proj.add")], None))
    assert [h.tag for h in slots.read(0)] == ["tag2"]
