"""Tasks every app has, under Celery's names, for ``task.map``, ``starmap`` and ``chunks``."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from celeriac.app import Celeriac


def register_builtins(app: Celeriac) -> None:
    def _task(name: str) -> Any:
        return app.tasks[name]

    @app.task(name="celery.map")
    def map_(task: dict[str, Any], it: list[Any]) -> list[Any]:
        """Call ``task`` on each item, here, in one task."""
        fn = _task(task["task"])
        return [fn(item) for item in it]

    @app.task(name="celery.starmap")
    def starmap(task: dict[str, Any], it: list[list[Any]]) -> list[Any]:
        """Call ``task(*item)`` for each item, here, in one task."""
        fn = _task(task["task"])
        return [fn(*item) for item in it]
