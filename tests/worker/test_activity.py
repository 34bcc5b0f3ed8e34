"""Activity keeps the starts of the tasks a consumer holds, and only those."""

from __future__ import annotations

from celeriac.brokers.base import Delivery
from celeriac.protocol.message import build_task_message, read_headers
from celeriac.protocol.serializers import default_registry
from celeriac.worker import activity as activity_module
from celeriac.worker.activity import Activity
from celeriac.worker.inflight import InFlight
from celeriac.worker.job import Job


def _run_one(inflight: InFlight, act: Activity, task_id: str) -> None:
    """Hold a message, start its task (as a pool does), settle it: the life of one task."""
    message = build_task_message(default_registry, task_name="proj.add", task_id=task_id)
    [(job_id, _)] = inflight.add([Delivery(message, "q", ("q", task_id, 1), 1)])
    inflight.working_on(job_id, task_id)
    headers = read_headers(message, default_registry, frozenset({"application/json"}))
    act.started(Job(job_id, message, headers, "q", 1, "node@h"), 4242)
    assert inflight.settled([job_id]) == [task_id]


def test_settled_tasks_are_forgotten_without_anyone_asking_for_active() -> None:
    # A prefork child's Activity is never asked for active(); before, it kept one entry per
    # task it ever ran (the supervisor answers inspect from the lease slots).
    inflight = InFlight(1)
    act = Activity("node@h")
    act.inflight = inflight  # what attach() sets; the pool's start hook calls started()
    n = 3 * activity_module._PRUNE_FLOOR
    for i in range(n):
        _run_one(inflight, act, f"t-{i}")
    assert len(act._started) <= activity_module._PRUNE_FLOOR
    assert act.total["proj.add"] == n


def test_a_held_task_keeps_its_start_across_a_prune() -> None:
    inflight = InFlight(1)
    act = Activity("node@h")
    act.inflight = inflight  # what attach() sets; the pool's start hook calls started()
    message = build_task_message(default_registry, task_name="proj.add", task_id="held")
    [(job_id, _)] = inflight.add([Delivery(message, "q", ("q", "held", 1), 1)])
    inflight.working_on(job_id, "held")
    headers = read_headers(message, default_registry, frozenset({"application/json"}))
    act.started(Job(job_id, message, headers, "q", 1, "node@h"), 7)
    for i in range(2 * activity_module._PRUNE_FLOOR):
        _run_one(inflight, act, f"t-{i}")
    assert [(info["id"], info["worker_pid"]) for info in act.active()] == [("held", 7)]
