"""Which fault scenario applies to which broker: one place, read by the tests and the report.

Each entry is one test of ``tests/faults/`` (a scenario of ``shared/RELIABILITY.md`` §2, or one of
issue 13's reproduced failures, tagged with its letter). Each cell is :data:`RUN` (the test runs
and must pass), an :class:`XFail` (the test runs and must fail: a known failure, strict, so the
mark goes when the fix lands) or an :class:`NA` (no test: the reason is written here and
rendered in ``docs/reliability.md``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pytest

BROKERS = ("sqlite", "redis", "amqp")


@dataclass(frozen=True)
class XFail:
    reason: str


@dataclass(frozen=True)
class NA:
    reason: str


RUN = "run"
Cell = Any  # RUN | XFail | NA

NO_NETWORK = NA("SQLite is a local file: there is no connection to cut, delay or blackhole")
NO_SERVER = NA(
    "SQLite is a file, not a server: there is nothing to restart (a worker killed "
    "mid-transaction is #1 and #3)"
)


@dataclass(frozen=True)
class Entry:
    scenario: str  # RELIABILITY.md §2 number(s), and the issue's letter when there is one
    title: str
    criterion: str
    cells: dict[str, Cell]
    long: bool = False
    issue: str = ""
    notes: list[str] = field(default_factory=list)


def _all(cell: Cell = RUN, **over: Cell) -> dict[str, Cell]:
    return {b: over.get(b, cell) for b in BROKERS}


MATRIX: dict[str, Entry] = {
    "kill_worker": Entry(
        "1",
        "kill -9 worker mid-task",
        "0 lost; only the killed in-flight tasks run twice; re-run within lease + task time",
        _all(),
    ),
    "kill_child": Entry(
        "2",
        "kill -9 one prefork child",
        "only the running task is charged (delivered again); the child's other prefetched "
        "tasks run once, none FAILURE or dead-lettered; the worker keeps serving",
        _all(),
        issue="b",
    ),
    "crash_at_fetch": Entry(
        "3",
        "crash between fetch and in-flight record",
        "0 lost over repeated SIGKILLs of a worker while it leases a stream of short tasks "
        "(seeded random kill times; the atomic fetch leaves no window)",
        _all(),
    ),
    "broker_restart": Entry(
        "4",
        "broker restart mid-stream",
        "0 lost among confirmed publishes; failed publishes raised; workers reconnect on their "
        "own within 10 s; duplicates <= tasks in flight at the restart",
        _all(sqlite=NO_SERVER),
        notes=[
            "Redis: a private redis-server, AOF appendfsync always, SIGKILLed and restarted",
            "RabbitMQ: a private node stopped and started again (~17 s)",
        ],
    ),
    "publish_drop": Entry(
        "5",
        "network drop during publish",
        "every delay() returns (the message is there once) or raises; 0 lost among returned; "
        "duplicates only under the same task id",
        _all(sqlite=NO_NETWORK),
    ),
    "ack_drop": Entry(
        "6",
        "network drop during ack",
        "the task's settlement is lost with the connection: it is settled again or run again "
        "(delivery_count > 1 in the ledger); exactly one SUCCESS stored, never overwritten",
        _all(sqlite=NO_NETWORK),
    ),
    "half_open": Entry(
        "7",
        "half-open connection (blackhole)",
        "a worker whose connection silently drops everything serves new tasks within 2 x its "
        "heartbeat/socket timeout + 3 s; a publish on a blackholed connection returns or raises "
        "within its timeout + 3 s",
        _all(sqlite=NO_NETWORK),
    ),
    "long_task": Entry(
        "8",
        "long task > lease",
        "a task running 3 x the visibility timeout on one of two workers runs exactly once",
        _all(),
    ),
    "gil_lease": Entry(
        "8",
        "task holding the GIL > lease",
        "a task stuck in C code (a regex) for ~3 x the visibility timeout is not started by a "
        "second worker",
        _all(
            amqp=NA(
                "the lease is the connection, kept by RabbitMQ's heartbeat (60 s): a GIL "
                "held for a few seconds cannot lose it"
            ),
        ),
        issue="d",
    ),
    "eta_lease": Entry(
        "9",
        "ETA/countdown > lease",
        "each task runs exactly once, not before its ETA, at most 2 s after it (margin for 2 "
        "shared cores)",
        _all(),
    ),
    "poison_input": Entry(
        "10+11",
        "poison messages: undecodable body, bad content type, unknown task",
        "the worker never exits; every good task runs once; every bad message is dead-lettered "
        "with its reason",
        _all(),
    ),
    "bad_row": Entry(
        "10",
        "one bad SQLite row (headers not JSON)",
        "the row is dead-lettered (or set aside) and the tasks behind it run",
        _all(
            redis=NA("Redis's form, a list element that is not an envelope, is in #10+11"),
            amqp=NA(
                "RabbitMQ hands over headers already parsed: a frame that does not parse "
                "is the server's to refuse"
            ),
        ),
        issue="c",
    ),
    "poison_crash": Entry(
        "12",
        "poison task that kills its process",
        "os._exit(1) every run: dead-lettered after worker_max_deliveries (3) deliveries; "
        "crashes <= 3; every other task runs once",
        _all(),
        issue="a",
    ),
    "duplicate_publish": Entry(
        "14",
        "duplicate delivery: one task id published twice",
        "a single terminal state: the first SUCCESS stays (never overwritten), and the second "
        "message is acknowledged without running",
        _all(),
    ),
    "chord_redelivery": Entry(
        "15",
        "chord under redelivery",
        "a worker killed right after publishing a chord's body, before acking the header that "
        "completed it: the body runs exactly once with every header result in order",
        _all(),
        issue="i",
    ),
    "backlog": Entry(
        "17",
        "backlog memory bound",
        "10,000 queued tasks (5,000 on RabbitMQ) before one worker starts: it leases at most its "
        "prefetch (times worker_prefetch_growth for tasks this short), and its RSS stays under "
        "150 MB a process while it drains",
        _all(),
    ),
    "backpressure": Entry(
        "18",
        "slow consumer / backpressure (short)",
        "a producer at ~10 x the worker's rate (4 threads, full speed, against a worker "
        "limited to 100 tasks/s) for 2 s: its RSS grows < 50 MB; every accepted publish runs "
        "once after the burst",
        _all(),
    ),
    "backend_down": Entry(
        "19",
        "result backend down",
        "the result Redis stops for 5 s during processing: a task's message is acknowledged "
        "only after its result is stored (at most one task per slot runs in the outage), every "
        "result is stored after it returns (0 missing), none runs twice, get(timeout=2) raises "
        "within 2 s + 3 s",
        _all(),
    ),
    "redis_down_calls": Entry(
        "19",
        "client calls with Redis down",
        "with the Redis broker and backend down, get(timeout=5) and delay() return or raise "
        "within 5 s + 3 s",
        _all(
            sqlite=NA("no server to be down"),
            amqp=NA("Redis-specific (issue 13 h)"),
        ),
        issue="h",
    ),
    "finisher_wedge": Entry(
        "",
        "permanent error while applying an outcome",
        "a follow-up to a queue that refuses every publish (SQLite: a trigger; Redis: a key of "
        "the wrong type; RabbitMQ: a queue declared with other arguments): that task ends "
        "FAILURE or dead-lettered, the tasks behind it get their results",
        _all(),
        issue="e",
    ),
    "fairness": Entry(
        "",
        "per-task fairness",
        "4 x 1 s tasks on -c 2 take < 3.2 s (not 4); 6 short tasks sent with a 3 s one finish "
        "within 1 s (a slot is free all along)",
        _all(),
        issue="f",
    ),
    "memory_limit": Entry(
        "",
        "--max-memory-per-child during a task",
        "a task allocating 600 MB over 3 s past a 150 MB limit is stopped before it finishes, "
        "its process under 300 MB",
        _all(
            redis=NA("the pool's limit, not the broker's: one cell (SQLite) covers it"),
            amqp=NA("the pool's limit, not the broker's: one cell (SQLite) covers it"),
        ),
        issue="g",
    ),
    "graceful_shutdown": Entry(
        "21",
        "graceful shutdown (SIGTERM) under load",
        "running tasks finish, prefetched ones go back; 0 lost, 0 run twice; the worker exits "
        "within the longest task + 5 s",
        _all(),
    ),
    "revocation": Entry(
        "22",
        "revocation durability",
        "20 revoked pending tasks: none runs on workers started after the revoke",
        _all(),
    ),
    "mixed_fleet": Entry(
        "23",
        "mixed fleet with Celery 5.7 workers",
        "a task abandoned by a killed Celery worker is run by a Celeriac worker, and the other "
        "way round; no format errors in either log",
        _all(sqlite=NA("Celery has no broker for Celeriac's SQLite file")),
    ),
    "huge_message": Entry(
        "13",
        "huge message",
        "refused at publish with a clear error",
        _all(
            NA(
                "no fault to inject: broker_max_message_size is enforced client-side and "
                "unit-tested (tests/test_app.py)"
            )
        ),
    ),
    "clock_skew": Entry(
        "16",
        "clock skew for ETA",
        "one clock authority",
        _all(
            NA(
                "needs a faked clock per process (libfaketime is not installed); the brokers "
                "hold ETAs on their own clock (Redis TIME, RabbitMQ TTL), SQLite on the "
                "machine's"
            )
        ),
    ),
    # -- long: `pytest -m soak` --------------------------------------------------------------
    "kill_worker_repeated": Entry(
        "1 x N",
        "kill -9 worker mid-task, repeated with seeded random times",
        "as #1, worst case over FAULT_REPEAT runs",
        _all(),
        long=True,
    ),
    "kill_child_repeated": Entry(
        "2 x N",
        "kill -9 a prefork child, repeated",
        "as #2, worst case over FAULT_REPEAT runs",
        _all(),
        long=True,
        issue="b",
    ),
    "backpressure_long": Entry(
        "18",
        "backpressure at length",
        "a producer thread at full speed (5-30 x a worker limited to 100/s) for "
        "FAULT_SOAK_SECONDS: producer RSS grows < 50 MB, 0 lost, 0 run twice",
        _all(),
        long=True,
    ),
    "failover": Entry(
        "20",
        "broker failover (Redis replica promoted)",
        "report the loss window: confirmed tasks lost when a lagging replica is promoted "
        "(without WAIT: may be > 0, reported; the count is the measurement)",
        _all(
            sqlite=NA("no replication"),
            amqp=NA(
                "needs a RabbitMQ cluster (quorum queues); "
                "one private node is all this machine runs"
            ),
        ),
        long=True,
    ),
    "soak": Entry(
        "24",
        "soak",
        "FAULT_SOAK_SECONDS of load (~12 tasks/s, half what the workers run) with a random "
        "fault every FAULT_SOAK_EVERY s (kill -9 a worker or a child; on Redis and RabbitMQ "
        "also a proxy cut): 0 lost, "
        "duplicates <= tasks in flight at the faults (those run twice outside them reported), "
        "a steady worker's FDs flat over the second half",
        _all(),
        long=True,
    ),
}


def cells(key: str) -> Callable[[Callable[..., Any]], Any]:
    """Parametrize a test over the brokers its matrix entry applies to (xfail where it says)."""
    entry = MATRIX[key]
    params = []
    for broker, cell in entry.cells.items():
        if isinstance(cell, NA):
            continue
        marks: list[Any] = [getattr(pytest.mark, "soak" if entry.long else "faults")]
        if broker in ("redis", "amqp"):
            marks.append(getattr(pytest.mark, broker))
        if broker == "amqp" or key in ("backend_down",):
            marks.append(pytest.mark.redis)  # results in Redis
        if isinstance(cell, XFail):
            marks.append(pytest.mark.xfail(strict=True, reason=cell.reason))
        params.append(pytest.param(broker, marks=marks, id=broker))

    def apply(fn: Callable[..., Any]) -> Any:
        fn = pytest.mark.scenario(key)(fn)
        return pytest.mark.parametrize("broker", params)(fn)

    return apply
