"""Tasks by name, with did-you-mean errors."""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from celeriac.exceptions import NotRegistered

if TYPE_CHECKING:
    from celeriac.tasks.task import Task


class TaskRegistry:
    def __init__(self) -> None:
        self._tasks: dict[str, Task[Any, Any]] = {}

    def register(self, task: Task[Any, Any]) -> None:
        self._tasks[task.name] = task

    def get(self, name: str) -> Task[Any, Any] | None:
        return self._tasks.get(name)

    def __getitem__(self, name: str) -> Task[Any, Any]:
        task = self._tasks.get(name)
        if task is None:
            raise NotRegistered(self.missing_message(name))
        return task

    def missing_message(self, name: str) -> str:
        import difflib  # only for this message

        close = difflib.get_close_matches(name, self.names(), n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        return f"no task named {name!r}{hint}"

    def __contains__(self, name: object) -> bool:
        return name in self._tasks

    def __iter__(self) -> Iterator[str]:
        return iter(self._tasks)

    def __len__(self) -> int:
        return len(self._tasks)

    def names(self, include_builtin: bool = True) -> list[str]:
        return sorted(n for n in self._tasks if include_builtin or not n.startswith("celeriac."))
