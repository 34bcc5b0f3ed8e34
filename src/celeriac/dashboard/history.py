"""The dashboard's history: every task it has seen in events, kept in a store of its own.

Result backends cannot serve a task list (Redis, memcached and ``rpc://`` keep results as keys
with a TTL and no index), so the dashboard writes what events say into a
:class:`HistoryStore`: one row per task, updated as its events arrive, listed newest first
(by when the dashboard first saw it) with keyset pagination, so any page costs the same
whatever the store holds. A finished task (succeeded, failed, revoked, rejected) keeps its
state when a late event (a client's ``task-sent``) comes after it, as in
:class:`celeriac.events.State`. Rows older than the retention are pruned.

SQLite (:mod:`.sqlite_history`) is the one store so far; :func:`open_history` picks one by URL.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from celeriac.exceptions import ConfigurationError

Event = dict[str, Any]

#: Columns of a stored task, in order.
COLUMNS = (
    "uuid",
    "name",
    "state",
    "worker",
    "queue",
    "args",
    "kwargs",
    "result",
    "exception",
    "traceback",
    "runtime",
    "retries",
    "seen_at",
    "sent_at",
    "received_at",
    "started_at",
    "finished_at",
    "updated_at",
)


@dataclass(frozen=True)
class TaskRow:
    """One task as the history knows it (times are unix seconds, None: not seen)."""

    uuid: str
    name: str | None
    state: str
    worker: str | None
    queue: str | None
    args: str | None
    kwargs: str | None
    result: str | None
    exception: str | None
    traceback: str | None
    runtime: float | None
    retries: int | None
    seen_at: float
    sent_at: float | None
    received_at: float | None
    started_at: float | None
    finished_at: float | None
    updated_at: float


@dataclass(frozen=True)
class TaskQuery:
    """A page of the task list: ``text`` matches an id prefix or a substring of the name or
    arguments; ``state`` and ``name`` match exactly; ``cursor`` continues after a page."""

    text: str = ""
    state: str = ""
    name: str = ""
    cursor: str = ""
    limit: int = 50


@dataclass(frozen=True)
class TaskPage:
    rows: list[TaskRow]
    #: the cursor of the next (older) page, "" when this is the last
    next_cursor: str


@dataclass(frozen=True)
class Finished:
    """A finished task, for the charts."""

    at: float
    runtime: float | None
    state: str


class HistoryStore(ABC):
    """Where the dashboard keeps task history (module docstring)."""

    @abstractmethod
    def record(self, events: Sequence[Event]) -> int:
        """Apply task events in order (others are ignored); how many were task events."""

    @abstractmethod
    def page(self, query: TaskQuery) -> TaskPage: ...

    @abstractmethod
    def get(self, uuid: str) -> TaskRow | None: ...

    @abstractmethod
    def count(self) -> int:
        """Tasks stored."""

    @abstractmethod
    def finished_since(self, since: float) -> list[Finished]:
        """Tasks that finished at ``since`` or later, oldest first."""

    @abstractmethod
    def prune(self, older_than: float) -> int:
        """Delete tasks first seen before ``older_than``; how many."""

    @abstractmethod
    def close(self) -> None: ...


def open_history(url: str) -> HistoryStore:
    """The store ``url`` names: ``sqlite:///path`` (or a bare file path)."""
    scheme, sep, _ = url.partition("://")
    if not sep or scheme == "sqlite":
        from celeriac.dashboard.sqlite_history import SQLiteHistory

        return SQLiteHistory(url)
    raise ConfigurationError(
        f"dashboard history store {scheme}:// is not supported; use sqlite:///path/to/file.db"
    )
