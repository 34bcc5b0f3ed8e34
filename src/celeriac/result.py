"""Handles on task results: :class:`AsyncResult` and, for tasks run here, :class:`EagerResult`."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any, Generic, TypeVar

from celeriac import states
from celeriac.protocol.results import exception_from_dict
from celeriac.protocol.timeutil import parse_iso

if TYPE_CHECKING:
    import datetime as dt

    from celeriac.app import Celeriac
    from celeriac.backends.base import ResultBackend

R = TypeVar("R")


class AsyncResult(Generic[R]):
    """The state and outcome of a task, read from the result backend.

    ``get()`` returns the task's value (typed with the task's return type) or raises the task's
    exception, rebuilt as its original type when that type is importable here.
    """

    def __init__(
        self,
        id: str,
        app: Celeriac | None = None,
        *,
        backend: ResultBackend | None = None,
        task_name: str | None = None,
    ) -> None:
        if backend is None and app is None:
            raise ValueError("AsyncResult needs an app or a backend")
        self.id = id
        self.app = app
        self._backend = backend
        self.task_name = task_name
        self._cache: dict[str, Any] | None = None
        #: The result this one follows in a workflow (the previous chain step, a chord's header).
        self.parent: AsyncResult[Any] | None = None

    @property
    def backend(self) -> ResultBackend:
        if self._backend is None:
            assert self.app is not None
            self._backend = self.app.backend
        return self._backend

    @property
    def task_id(self) -> str:
        return self.id

    def _get_meta(self) -> dict[str, Any]:
        if self._cache is not None:
            return self._cache
        meta = self.backend.get_meta(self.id)
        if meta.get("status") in states.READY_STATES:
            self._cache = meta
        return meta

    @property
    def state(self) -> str:
        return str(self._get_meta().get("status", states.PENDING))

    status = state

    @property
    def info(self) -> Any:
        """The value for SUCCESS, the exception for failures, progress meta otherwise."""
        meta = self._get_meta()
        if meta.get("status") in states.EXCEPTION_STATES:
            return exception_from_dict(meta.get("result"))
        return meta.get("result")

    result = info

    @property
    def traceback(self) -> str | None:
        tb = self._get_meta().get("traceback")
        return str(tb) if tb is not None else None

    @property
    def date_done(self) -> dt.datetime | None:
        import datetime as dt

        ts = parse_iso(self._get_meta().get("date_done"))
        return None if ts is None else dt.datetime.fromtimestamp(ts, dt.timezone.utc)

    def ready(self) -> bool:
        return self.state in states.READY_STATES

    def successful(self) -> bool:
        return self.state == states.SUCCESS

    def failed(self) -> bool:
        return self.state == states.FAILURE

    def get(self, timeout: float | None = None, propagate: bool = True) -> R:
        """Wait for the task and return its value; re-raise its exception when ``propagate``."""
        meta = self._cache or self.backend.wait_for(self.id, timeout)
        self._cache = meta
        if meta.get("status") in states.PROPAGATE_STATES:
            exc = exception_from_dict(meta.get("result"))
            if propagate:
                raise exc
            return exc  # type: ignore[return-value]
        return meta.get("result")  # type: ignore[return-value]

    wait = get

    async def aget(self, timeout: float | None = None, propagate: bool = True) -> R:
        """``get()`` for async code: waits without blocking the event loop."""
        import asyncio
        import time

        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            # Wait in short slices in a thread, so cancelling the caller takes effect quickly.
            left = None if deadline is None else max(0.0, deadline - time.monotonic())
            step = 0.5 if left is None else min(0.5, left)
            try:
                return await asyncio.to_thread(self.get, step, propagate)
            except TimeoutError:
                if left is not None and left <= step:
                    raise

    def forget(self) -> None:
        self._cache = None
        self.backend.forget(self.id)

    @property
    def children(self) -> list[AsyncResult[Any]]:
        """Results of tasks this task started (the next chain step, callbacks), once ready."""
        out: list[AsyncResult[Any]] = []
        for child in self._get_meta().get("children") or []:
            try:
                task_id = child[0][0]
            except (TypeError, IndexError):
                continue
            out.append(AsyncResult(task_id, self.app, backend=self._backend))
        return out

    def collect(self, timeout: float | None = None) -> list[tuple[AsyncResult[Any], Any]]:
        """This result and its descendants (depth first) with their values, waiting for each."""
        out: list[tuple[AsyncResult[Any], Any]] = [(self, self.get(timeout))]
        for child in self.children:
            out.extend(child.collect(timeout))
        return out

    def as_tuple(self) -> list[Any]:
        parent = self.parent.as_tuple() if self.parent is not None else None
        return [[self.id, parent], None]

    def revoke(self, terminate: bool = False, signal: str | None = None) -> None:
        """Revoke this task: it will not start; with ``terminate``, it stops if running."""
        if self.app is None:
            raise ValueError("revoke() needs an AsyncResult bound to an app")
        self._cache = None
        self.app.control.revoke(self.id, terminate=terminate, signal=signal)

    def __repr__(self) -> str:
        return f"<AsyncResult: {self.id}>"

    def __eq__(self, other: object) -> bool:
        if isinstance(other, AsyncResult):
            return self.id == other.id
        return isinstance(other, str) and other == self.id

    def __hash__(self) -> int:
        return hash(self.id)


class EagerResult(AsyncResult[R]):
    """The outcome of a task run in this process by ``apply()`` or eager mode."""

    def __init__(self, id: str, meta: dict[str, Any], exc: BaseException | None = None) -> None:
        super().__init__(id, backend=_NO_BACKEND)
        self._cache = meta
        self._exc = exc

    def get(self, timeout: float | None = None, propagate: bool = True) -> R:
        meta = self._cache or {}
        if meta.get("status") in states.PROPAGATE_STATES:
            exc = self._exc or exception_from_dict(meta.get("result"))
            if propagate:
                raise exc
            return exc  # type: ignore[return-value]
        return meta.get("result")  # type: ignore[return-value]

    @property
    def info(self) -> Any:
        if self._exc is not None:
            return self._exc
        return super().info

    result = info

    def forget(self) -> None:
        pass

    def __repr__(self) -> str:
        return f"<EagerResult: {self.id}>"


class GroupResult(AsyncResult[list[Any]]):
    """The results of a group's members, in order (``get()`` returns the list of values)."""

    def __init__(
        self,
        id: str,
        results: list[AsyncResult[Any]],
        app: Celeriac | None = None,
    ) -> None:
        super().__init__(id, app, backend=None if app is not None else _NO_BACKEND)
        self.results = results

    @property
    def state(self) -> str:
        if self.ready():
            return states.FAILURE if self.failed() else states.SUCCESS
        return states.PENDING

    def __iter__(self) -> Iterator[AsyncResult[Any]]:
        return iter(self.results)

    def __len__(self) -> int:
        return len(self.results)

    def __getitem__(self, index: int) -> AsyncResult[Any]:
        return self.results[index]

    def ready(self) -> bool:
        return all(r.ready() for r in self.results)

    def successful(self) -> bool:
        return all(r.successful() for r in self.results)

    def failed(self) -> bool:
        return any(r.failed() for r in self.results)

    def waiting(self) -> bool:
        return not self.ready()

    def completed_count(self) -> int:
        return sum(1 for r in self.results if r.successful())

    def get(self, timeout: float | None = None, propagate: bool = True) -> list[Any]:
        """Every member's value in order; ``timeout`` bounds the whole wait."""
        deadline = None if timeout is None else time.monotonic() + timeout
        out = []
        for r in self.results:
            left = None if deadline is None else max(0.0, deadline - time.monotonic())
            out.append(r.get(timeout=left, propagate=propagate))
        return out

    join = get

    def revoke(self, terminate: bool = False, signal: str | None = None) -> None:
        if self.app is None:
            raise ValueError("revoke() needs a GroupResult bound to an app")
        self.app.control.revoke([r.id for r in self.results], terminate=terminate, signal=signal)

    def forget(self) -> None:
        for r in self.results:
            r.forget()
        if self.app is not None:
            self.app.backend.forget_group(self.id)

    def as_tuple(self) -> list[Any]:
        parent = self.parent.as_tuple() if self.parent is not None else None
        return [[self.id, parent], [r.as_tuple() for r in self.results]]

    def save(self) -> None:
        """Store the member ids under the group id (``celery-taskset-meta-<id>``)."""
        if self.app is None:
            raise ValueError("save() needs a GroupResult bound to an app")
        self.app.backend.save_group(self.id, self.as_tuple())

    @classmethod
    def restore(cls, group_id: str, app: Celeriac) -> GroupResult | None:
        """The group saved under ``group_id``, or None."""
        data = app.backend.restore_group(group_id)
        return None if data is None else _from_tuple(data, app)  # type: ignore[return-value]

    def __repr__(self) -> str:
        return f"<GroupResult: {self.id} [{', '.join(r.id for r in self.results)}]>"


def _from_tuple(data: Any, app: Celeriac) -> AsyncResult[Any]:
    (rid, parent), children = data
    if children is not None:
        result: AsyncResult[Any] | GroupResult = GroupResult(
            rid,
            [_from_tuple(c, app) for c in children],
            app=app,  # type: ignore[misc]
        )
    else:
        result = AsyncResult(rid, app)
    if parent:
        result.parent = _from_tuple(parent, app)
    return result


def _make_no_backend() -> ResultBackend:
    from celeriac.backends.base import DisabledBackend

    return DisabledBackend()


_NO_BACKEND = _make_no_backend()
