"""Remote control that changes a running worker, on Redis: rate and time limits, queues and the
pool's size, on a prefork worker whose children consume (the supervisor passes each change to
them), and the typed refusal of what a threads worker cannot do. One prefork worker serves every
test; each test undoes its change."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from itertools import pairwise
from typing import Any

import pytest

from celeriac import states

from .conftest import ledger_records
from .redis_env import HERE, RedisEnv, wait_for

pytestmark = [pytest.mark.e2e, pytest.mark.redis, pytest.mark.xdist_group("control-runtime")]

NODE = "p1@e2e"


class Fleet:
    def __init__(self, env: RedisEnv, tasks: Any, queue: str) -> None:
        self.env, self.tasks, self.queue = env, tasks, queue
        self.control = tasks.app.control

    def ask(self, command: str, node: str = NODE, **arguments: Any) -> Any:
        """The one reply of ``node`` to ``command``."""
        replies = self.control.broadcast(
            command, arguments, destination=[node], reply=True, timeout=5.0
        )
        assert len(replies) == 1, (replies, self.env.log(self.env.workers[0])[-4000:])
        return replies[0][node]

    def starts(self, kind: str = "run") -> dict[str, tuple[int, float]]:
        """Ledger records of ``kind``: task id -> (pid, time)."""
        out = {}
        for path, (k, task_id, at) in ledger_records(self.env.ledger):
            if k == kind:
                out[task_id] = (int(path.stem), float(at))
        return out


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    mp = pytest.MonkeyPatch()
    env = RedisEnv(tmp_path_factory.mktemp("ctl-runtime"))
    mp.setenv("E2E_LEDGER", str(env.ledger))
    mp.syspath_prepend(str(HERE))
    import redis_tasks

    redis_tasks.app.conf.update(broker_url=env.url, result_backend=env.url)
    redis_tasks.app.close()
    queue = f"rt-{uuid.uuid4().hex[:8]}"
    try:
        env.start_worker("-Q", queue, "-c", "2", "-P", "prefork", name="p1")
        yield Fleet(env, redis_tasks, queue)
    finally:
        redis_tasks.app.close()
        env.close()
        mp.undo()


def test_rate_limit_set_remotely_spaces_the_starts(fleet):
    reply = fleet.ask("rate_limit", task_name="interop.stamp", rate_limit="2/s")
    assert reply == {"ok": "new rate limit set successfully"}
    try:
        results = [fleet.tasks.stamp.apply_async(queue=fleet.queue) for _ in range(6)]
        for r in results:
            r.get(timeout=15)
        ledger = fleet.starts()
        runs = sorted(ledger[r.id] for r in results)
        assert len(runs) == 6
        times = sorted(at for _, at in runs)
        # 2/s for the worker: never more than two starts within a second (the slots are exact;
        # a task body starts a little after its slot, by up to ~0.1 s on a loaded machine)...
        assert all(b - a >= 0.8 for a, b in zip(times, times[2:], strict=False)), times
        assert times[-1] - times[0] >= 1.8, times
        # ...each of the two children taking its half, a start a second.
        for pid in {pid for pid, _ in runs}:
            mine = sorted(at for p, at in runs if p == pid)
            assert all(b - a >= 0.8 for a, b in pairwise(mine)), mine
    finally:
        disabled = fleet.ask("rate_limit", task_name="interop.stamp", rate_limit=None)
        assert disabled == {"ok": "rate limit disabled successfully"}
    # Lifted: a burst starts at once again.
    burst = [fleet.tasks.stamp.apply_async(queue=fleet.queue) for _ in range(4)]
    times = sorted(fleet.starts()[r.id][1] for r in burst if r.get(timeout=15))
    assert times[-1] - times[0] < 0.9, times
    bad = fleet.ask("rate_limit", task_name="interop.stamp", rate_limit="fast")
    assert bad["error"].startswith("Invalid rate limit string")


def test_time_limit_set_remotely_ends_a_long_task(fleet):
    reply = fleet.ask("time_limit", task_name="interop.sleepy", soft=None, hard=1.0)
    assert reply == {"ok": "time limits set successfully"}
    try:
        # One task per child; both children end and are replaced, and a replacement (started
        # after the change) enforces it too.
        first = [fleet.tasks.sleepy.apply_async((20,), queue=fleet.queue) for _ in range(2)]
        for r in first:
            wait_for(lambda r=r: r.state == states.FAILURE, 15, "TimeLimitExceeded")
        later = fleet.tasks.sleepy.apply_async((20,), queue=fleet.queue)
        wait_for(lambda: later.state == states.FAILURE, 15, "TimeLimitExceeded")
        for r in [*first, later]:
            assert type(r.result).__name__ == "TimeLimitExceeded", r.result
        ends = fleet.env.ledger_entries("end")
        assert [ends[r.id] for r in [*first, later]] == [0, 0, 0]
    finally:
        fleet.ask("time_limit", task_name="interop.sleepy", soft=None, hard=None)
    assert fleet.tasks.sleepy.apply_async((0.1,), queue=fleet.queue).get(timeout=15) == 0.1


def test_add_consumer_then_cancel_consumer(fleet):
    extra = f"rt-extra-{uuid.uuid4().hex[:8]}"
    waiting = [fleet.tasks.add.apply_async((i, 1), queue=extra) for i in range(3)]
    assert fleet.ask("add_consumer", queue=extra) == {"ok": f"add consumer {extra}"}
    assert [r.get(timeout=15) for r in waiting] == [1, 2, 3]
    queues = [q["name"] for q in fleet.ask("active_queues")]
    assert queues == [fleet.queue, extra]

    assert fleet.ask("cancel_consumer", queue=extra) == {"ok": f"no longer consuming from {extra}"}
    assert [q["name"] for q in fleet.ask("active_queues")] == [fleet.queue]
    left = [fleet.tasks.add.apply_async((i, 10), queue=extra) for i in range(2)]
    # The children keep consuming their own queue (several fetches each) but not the other.
    for i in range(4):
        assert fleet.tasks.add.apply_async((i, 0), queue=fleet.queue).get(timeout=15) == i
    assert fleet.tasks.app.broker.depth(extra) == 2
    assert [fleet.env.ledger_entries("run")[r.id] for r in left] == [0, 0]
    fleet.tasks.app.broker.purge(extra)


def _pool(fleet: Fleet, node: str = NODE) -> dict[str, Any]:
    return fleet.ask("stats", node=node)["pool"]  # type: ignore[no-any-return]


def test_pool_shrink_and_grow_on_prefork(fleet):
    assert fleet.ask("pool_shrink", n=1) == {"ok": "pool will shrink"}
    wait_for(lambda: len(_pool(fleet)["processes"]) == 1, 15, "one child left")
    assert _pool(fleet)["max-concurrency"] == 1
    assert fleet.ask("pool_grow", n=1) == {"ok": "pool will grow"}
    wait_for(lambda: len(_pool(fleet)["processes"]) == 2, 15, "a second child")
    pool = _pool(fleet)
    assert pool["max-concurrency"] == 2
    assert fleet.ask("stats")["prefetch_count"] == 8  # 4 per child
    # Two tasks now run at once, in two processes.
    pair = [fleet.tasks.sleepy.apply_async((1.0,), queue=fleet.queue) for _ in range(2)]
    assert [r.get(timeout=15) for r in pair] == [1.0, 1.0]
    starts, ends = fleet.starts("start"), fleet.starts("end")
    (pa, sa), (pb, sb) = starts[pair[0].id], starts[pair[1].id]
    assert pa != pb and {pa, pb} <= set(pool["processes"])
    assert sb < ends[pair[0].id][1] and sa < ends[pair[1].id][1]  # the runs overlap
    # Beyond the maximum (4 x the starting concurrency): refused, typed, nothing changed.
    refused = fleet.ask("pool_grow", n=7)
    assert refused == {
        "error": f"pool_grow: {NODE} runs 2 and may grow to 8 at most (worker_max_pool_size)",
        "unsupported": True,
    }
    assert _pool(fleet)["max-concurrency"] == 2


def test_a_threads_worker_refuses_a_hard_time_limit_and_grows(fleet):
    fleet.env.start_worker("-Q", fleet.queue, "-c", "1", "-P", "threads", name="t1")
    node = "t1@e2e"
    hard = fleet.ask("time_limit", node=node, task_name="interop.sleepy", hard=5.0)
    assert hard == {
        "error": "time_limit: the threads pool cannot enforce a hard time limit (it cannot "
        "kill a running task); set soft= only",
        "unsupported": True,
    }
    soft = fleet.ask("time_limit", node=node, task_name="interop.sleepy", soft=5.0)
    assert soft == {"ok": "time limits set successfully"}
    assert fleet.ask("pool_grow", node=node, n=1) == {"ok": "pool will grow"}
    assert _pool(fleet, node)["max-concurrency"] == 2
    assert fleet.ask("pool_shrink", node=node, n=2) == {
        "error": f"pool_shrink: {node} runs 2; a pool keeps at least 1",
        "unsupported": True,
    }
