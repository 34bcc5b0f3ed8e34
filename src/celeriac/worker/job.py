"""What flows through a worker: a :class:`Job` to run, the :class:`Outcome` of running it.

Both cross from prefork children as plain tuples (``to_wire``/``from_wire``): pickling a slotted
dataclass runs Python code per field and showed up as a fifth of the worker's CPU.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from celeriac.protocol.message import Message, TaskHeaders, read_headers
from celeriac.protocol.publication import Publication

if TYPE_CHECKING:
    from celeriac.app import Celeriac


def accepted(app: Celeriac) -> frozenset[str]:
    """Content types this app's workers decode (``accept_content``)."""
    return app.serializers.content_types(app.conf.accept_content)


class Action(enum.Enum):
    """What becomes of a message once its outcome is applied."""

    #: done: acknowledge it (success, failure, revoked, ...)
    ACK = "ack"
    #: set aside with a reason for a person to look at; not delivered again
    DEAD_LETTER = "dead_letter"
    #: give it back to be delivered again (at ``delay_until`` if set); counts as a delivery
    REQUEUE = "requeue"
    #: hand it back to the broker to hold until ``delay_until`` (an ETA a producer put only in
    #: the headers); not a delivery attempt
    DELAY = "delay"


@dataclass(slots=True)
class Job:
    """One task for a pool."""

    job_id: int
    message: Message
    headers: TaskHeaders
    queue: str
    delivery_count: int
    hostname: str
    #: run in the caller's process (``apply()``, ``task_always_eager``); never crosses a pipe
    eager: bool = False

    def to_wire(self) -> tuple[Any, ...]:
        """A plain tuple for the pipe to a prefork child (see :class:`Outcome`)."""
        m = self.message
        return (
            self.job_id,
            m.headers,
            m.properties,
            m.body,
            m.content_type,
            m.content_encoding,
            self.queue,
            self.delivery_count,
            self.hostname,
        )

    @classmethod
    def from_wire(cls, app: Celeriac, data: tuple[Any, ...]) -> Job:
        job_id, headers, properties, body, ctype, cenc, queue, count, hostname = data
        message = Message(headers, properties, body, ctype, cenc)
        parsed = read_headers(message, app.serializers, accepted(app))
        return cls(job_id, message, parsed, queue, count, hostname)


@dataclass(slots=True)
class Outcome:
    """What became of a job, for the consumer to apply.

    Crosses from prefork children as a plain tuple (:meth:`to_wire`): pickling a slotted
    dataclass runs Python code per field and showed up as a fifth of the worker's CPU.
    """

    job_id: int
    task_id: str | None
    task_name: str | None = None
    state: str | None = None
    meta: bytes | None = None
    action: Action = Action.ACK
    reason: str = ""
    delay_until: float | None = None
    #: messages to publish before the outcome is acknowledged (a retry, callbacks, a chain's
    #: next step)
    followups: list[Publication] = field(default_factory=list)
    runtime: float = 0.0
    summary: str = ""
    #: results of other tasks to store with this one (the steps a failed chain never reaches)
    extra_results: list[tuple[str, str, bytes]] = field(default_factory=list)
    #: chord counters the follow-ups need, created before they are published
    chord_starts: list[tuple[str, int]] = field(default_factory=list)
    #: set when this task is a chord header: (group id, index, chord body)
    chord: tuple[str, int, dict[str, Any]] | None = None
    #: the exception the task raised (or that refused it), for eager callers who propagate it
    #: as it was; not on the wire (the stored result says the same in its own form)
    error: BaseException | None = field(default=None, compare=False)
    #: the task event this outcome makes (its type and own fields, e.g. ``("task-succeeded",
    #: {"result": "4"})``), for a worker that sends events; not on the wire either
    event: tuple[str, dict[str, Any]] | None = field(default=None, compare=False)

    def to_wire(self) -> tuple[Any, ...]:
        return (
            self.job_id,
            self.task_id,
            self.task_name,
            self.state,
            self.meta,
            self.action.value,
            self.reason,
            self.delay_until,
            [f.to_wire() for f in self.followups],
            self.runtime,
            self.summary,
            self.extra_results,
            self.chord_starts,
            self.chord,
        )

    @classmethod
    def from_wire(cls, data: tuple[Any, ...]) -> Outcome:
        (
            job_id,
            task_id,
            name,
            state,
            meta,
            action,
            reason,
            delay_until,
            followups,
            runtime,
            summary,
            extra,
            starts,
            chord,
        ) = data
        return cls(
            job_id,
            task_id,
            name,
            state,
            meta,
            Action(action),
            reason,
            delay_until,
            [Publication.from_wire(f) for f in followups],
            runtime,
            summary,
            extra,
            starts,
            chord,
        )
