"""The pool interface: take jobs, report outcomes, give back what never started."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from typing import TYPE_CHECKING

from celeriac.worker.executor import Job, Outcome

if TYPE_CHECKING:
    from celeriac.app import Celeriac

OutcomeCallback = Callable[[Outcome], None]


class Pool(ABC):
    """Runs jobs concurrently and reports each :class:`Outcome` through ``on_outcome``."""

    def __init__(
        self,
        app: Celeriac,
        concurrency: int,
        on_outcome: OutcomeCallback,
        *,
        max_tasks_per_child: int | None = None,
    ) -> None:
        self.app = app
        self.concurrency = concurrency
        self.on_outcome = on_outcome
        self.max_tasks_per_child = max_tasks_per_child

    @abstractmethod
    def start(self) -> None: ...

    @abstractmethod
    def submit(self, job: Job) -> None:
        """Queue a job; it runs when a slot is free. Must not block for long."""

    @abstractmethod
    def stop(self, *, cold: bool = False) -> list[Job]:
        """Stop taking jobs; return those that never started.

        Warm (``cold=False``): running jobs finish and report first. Cold: they are abandoned
        (their messages come back when their leases run out).
        """
