"""Running tasks in the calling process (``apply()``, ``task_always_eager``), as a worker would.

An eager call is one small worker of its own: its messages go to an in-memory broker and
backend, and the worker's own parts take them from there, with one task at a time on the
caller's thread, until nothing is left. The fetcher checks each message, the executor runs it,
and the settler applies its outcome (callbacks, chain steps, chord bodies, retries) by
publishing more messages. So arguments are serialized as they would be for a real worker (a
test catches what production would reject), and eager and worker semantics cannot drift apart.

What differs from a worker, as in Celery: countdowns, ETAs and retry delays are not waited for,
rate limits do not apply, and an exception the task raised can be re-raised as it was
(``task_eager_propagates`` or ``apply(throw=True)``).
"""

from __future__ import annotations

import dataclasses
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from celeriac.exceptions import CeleriacError
from celeriac.result import AsyncResult, EagerResult, GroupResult
from celeriac.sending import running_eagerly
from celeriac.transports import BackendConfig, Combined, open_transport
from celeriac.worker.executor import execute
from celeriac.worker.fetcher import Fetcher
from celeriac.worker.inflight import InFlight
from celeriac.worker.job import Job, Outcome
from celeriac.worker.settler import Settler

if TYPE_CHECKING:
    from celeriac.app import Celeriac
    from celeriac.protocol.publication import Publication

#: A call that keeps sending messages to itself (a task retrying forever) stops here.
_MAX_STEPS = 100_000


class EagerRun:
    """One eager call: its own in-memory broker and backend, worked through to the end."""

    def __init__(self, app: Celeriac) -> None:
        self.app = app
        conf = app.conf
        transport = self.transport = open_transport("memory://")
        self.broker = transport.broker()
        self.broker.topology = app.topology
        self.backend = transport.backend(
            "memory://",
            BackendConfig(
                serializer=conf.result_serializer,
                accept=tuple(conf.result_accept_content or conf.accept_content),
                expires=None,
            ),
        )
        self.queues: list[str] = []
        self.jobs: list[Job] = []
        #: exceptions as the tasks raised them, by task id
        self.errors: dict[str, BaseException] = {}
        running = threading.Event()
        running.set()
        combined = Combined(self.broker, self.backend)
        self.inflight = InFlight(1)
        self.settler = Settler(
            app,
            combined,
            self.inflight,
            hostname="eager",
            running=running,
            on_settled=lambda task_ids: None,
            publish=self.publish,
        )
        self.fetcher = Fetcher(
            app,
            combined,
            self.inflight,
            self.queues,
            hostname="eager",
            submit=self.jobs.append,
            report=self._report,
            ack=self.settler.ack_now,
            unsent=self.settler.send,
            eager=True,
        )

    def publish(self, publications: Sequence[Publication]) -> None:
        """Into this run's broker, due at once (a countdown is not waited for in eager mode),
        on queues the run then consumes."""
        due = [_due_now(p) for p in publications]
        for p in due:
            for queue in self.broker.local_targets(p.route):
                if queue not in self.queues:
                    self.queues.append(queue)
        self.broker.publish_many(due)

    def start(self, chord_starts: Sequence[tuple[str, int]] = ()) -> None:
        for group_id, size in chord_starts:
            self.backend.chord_start(group_id, size)

    def run(self) -> None:
        """Fetch, run and settle, one message at a time, until none is left."""
        with eager_scope():
            for _ in range(_MAX_STEPS):
                self.fetcher.fetch_once(1, 0.0)
                if not len(self.inflight):
                    return  # nothing left to fetch
                if self.jobs:  # else the checks refused it and its outcome is reported
                    self._report(execute(self.app, self.jobs.pop()))
                self.settler.apply_waiting()
        raise CeleriacError(f"eager run: still sending messages after {_MAX_STEPS} tasks")

    def _report(self, outcome: Outcome) -> None:
        if outcome.error is not None and outcome.task_id:
            self.errors[outcome.task_id] = outcome.error
        self.settler.report(outcome, driven=False)
        self.inflight.reported()

    def result(self, task_id: str) -> EagerResult[Any]:
        return EagerResult(task_id, self.backend.get_meta(task_id), self.errors.get(task_id))

    def handle(self, handle: AsyncResult[Any]) -> AsyncResult[Any]:
        """``handle`` (a frozen workflow's result) with every member's outcome from this run."""
        if isinstance(handle, GroupResult):
            out: AsyncResult[Any] = GroupResult(
                handle.id, [self.handle(r) for r in handle.results], app=self.app
            )
        else:
            out = self.result(handle.id)
        if handle.parent is not None:
            out.parent = self.handle(handle.parent)
        return out

    def close(self) -> None:
        self.transport.close()

    def __enter__(self) -> EagerRun:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _due_now(publication: Publication) -> Publication:
    """``publication`` without its ETA, in the broker's hands and in the message's header."""
    message = publication.message
    if message.headers.get("eta") is not None:
        message = dataclasses.replace(message, headers={**message.headers, "eta": None})
    return dataclasses.replace(publication, message=message, eta=None)


@contextmanager
def eager_scope() -> Iterator[None]:
    """Messages built in here are run here: they name no reply queue (nobody waits on one),
    so planning an eager call never reaches an ``rpc://`` server."""
    token = running_eagerly.set(True)
    try:
        yield
    finally:
        running_eagerly.reset(token)


def run_eagerly(
    app: Celeriac,
    publications: Sequence[Publication],
    handle: AsyncResult[Any],
    *,
    chord_starts: Sequence[tuple[str, int]] = (),
    throw: bool | None = None,
) -> AsyncResult[Any]:
    """Run ``publications`` and everything they cause here; ``handle`` with their outcomes.

    ``throw`` (default ``task_eager_propagates``): re-raise what the task behind ``handle``
    raised.
    """
    with EagerRun(app) as run:
        run.start(chord_starts)
        run.publish(publications)
        run.run()
        result = run.handle(handle)
    if app.conf.task_eager_propagates if throw is None else throw:
        _propagate(result)
    return result


def _propagate(result: AsyncResult[Any]) -> None:
    if isinstance(result, GroupResult):
        for member in result.results:
            _propagate(member)
    elif result.failed():
        result.get(propagate=True)
