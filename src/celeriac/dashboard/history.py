"""The dashboard's history: every task it has seen in events, kept in a store of its own.

Result backends cannot serve a task list (Redis, memcached and ``rpc://`` keep results as keys
with a TTL and no index), so the dashboard writes what events say into a
:class:`HistoryStore`: one row per task, updated as its events arrive, listed newest first
(by when the dashboard first saw it) with keyset pagination, so any page costs the same
whatever the store holds. A finished task (succeeded, failed, revoked, rejected) keeps its
state when a late event (a client's ``task-sent``) comes after it, as in
:class:`celeriac.events.State`. Rows older than the retention are pruned.

Two stores: an SQLite file (:mod:`.sqlite_history`, the default) and PostgreSQL
(``transports/postgres/history.py``); :func:`open_history` picks one by URL.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from celeriac.events.state import TASK_STATES
from celeriac.exceptions import CeleriacError

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


_TIME_COLUMN = {
    "task-sent": "sent_at",
    "task-received": "received_at",
    "task-started": "started_at",
    "task-succeeded": "finished_at",
    "task-failed": "finished_at",
    "task-revoked": "finished_at",
    "task-rejected": "finished_at",
}
_TEXT_FIELDS = ("name", "args", "kwargs", "result", "exception", "traceback")


def row_of(event: Event, now: float) -> tuple[Any, ...] | None:
    """The upsert's parameters for one event; None when it is not a task event."""
    kind = str(event.get("type", ""))
    uuid = event.get("uuid")
    if kind not in TASK_STATES or not uuid:
        return None
    ts = event.get("timestamp")
    at = float(ts) if isinstance(ts, int | float) else now
    values: dict[str, Any] = {c: None for c in COLUMNS}
    values.update(uuid=str(uuid), state=TASK_STATES[kind], seen_at=at, updated_at=at)
    for name in _TEXT_FIELDS:
        value = event.get(name)
        if value is not None and value != "":
            values[name] = str(value)
    if kind == "task-sent":
        values["queue"] = event.get("queue")
    else:
        values["worker"] = event.get("hostname")
    if kind == "task-revoked":
        how = "terminated" if event.get("terminated") else "expired" if event.get("expired") else ""
        values["exception"] = f"revoked ({how})" if how else "revoked"
    runtime = event.get("runtime")
    if isinstance(runtime, int | float):
        values["runtime"] = float(runtime)
    retries = event.get("retries")
    if isinstance(retries, int):
        values["retries"] = retries
    column = _TIME_COLUMN.get(kind)
    if column:
        values[column] = at
    return tuple(values[c] for c in COLUMNS)


def cursor_of(row: TaskRow) -> str:
    """The keyset cursor that continues after ``row`` (its first sight, then its id)."""
    return f"{row.seen_at!r}:{row.uuid}"


def parse_cursor(cursor: str) -> tuple[float, str] | None:
    """``(seen_at, uuid)`` of a cursor; None when it is empty or not one."""
    at, sep, uuid = cursor.partition(":")
    try:
        return (float(at), uuid) if sep else None
    except ValueError:
        return None


class HistoryError(CeleriacError):
    """The history store failed (its server went away, a statement failed)."""


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
    """The store ``url`` names: ``sqlite:///path`` (or a bare file path), or
    ``postgresql://user@host/db`` (``?schema=``, else ``celeriac_dashboard``)."""
    scheme, sep, _ = url.partition("://")
    if not sep or scheme == "sqlite":
        from celeriac.dashboard.sqlite_history import SQLiteHistory

        return SQLiteHistory(url)
    from celeriac.transports import history_store_class

    store: HistoryStore = history_store_class(url)(url)
    return store


def page_filter(query: TaskQuery, mark: str, like: str) -> tuple[list[str], list[Any]]:
    """The WHERE terms and parameters of a page of tasks, newest first, after the query's
    cursor: ``mark`` is the store's parameter placeholder (``?``, ``%s``) and ``like`` its
    case-insensitive match (SQLite's ``LIKE`` ignores ASCII case; PostgreSQL's ``ILIKE``)."""
    where: list[str] = []
    params: list[Any] = []
    if query.state:
        where.append(f"state = {mark}")
        params.append(query.state)
    if query.name:
        where.append(f"name = {mark}")
        params.append(query.name)
    if query.text:
        pattern = "%" + query.text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
        columns = ("uuid", "name", "args", "kwargs")
        where.append("(" + " OR ".join(f"{c} {like} {mark} ESCAPE '\\'" for c in columns) + ")")
        params += [pattern[1:] + "%", pattern + "%", pattern + "%", pattern + "%"]
    after = parse_cursor(query.cursor)
    if after is not None:
        where.append(f"(seen_at, uuid) < ({mark}, {mark})")
        params += list(after)
    return where, params
