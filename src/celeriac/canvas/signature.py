"""Signatures: a task call packed as data, serialized as Celery serializes it.

A :class:`Signature` is a ``dict`` with Celery's keys (``task``, ``args``, ``kwargs``, ``options``,
``subtask_type``, ``immutable``), so it crosses the wire as it is.
"""

from __future__ import annotations

import copy
from typing import TYPE_CHECKING, Any

from celeriac.protocol.message import new_id

if TYPE_CHECKING:
    from celeriac.app import Celeriac
    from celeriac.result import AsyncResult


class Signature(dict[str, Any]):
    """A task name with arguments and options, to be called later or elsewhere."""

    def __init__(
        self,
        task: str | dict[str, Any],
        args: tuple[Any, ...] | list[Any] | None = None,
        kwargs: dict[str, Any] | None = None,
        options: dict[str, Any] | None = None,
        *,
        immutable: bool = False,
        subtask_type: str | None = None,
        app: Celeriac | None = None,
    ) -> None:
        if isinstance(task, dict):
            super().__init__(copy.deepcopy(task))
            self.setdefault("args", [])
            self.setdefault("kwargs", {})
            self.setdefault("options", {})
            self.setdefault("subtask_type", None)
            self.setdefault("immutable", False)
        else:
            super().__init__(
                task=task,
                args=list(args or ()),
                kwargs=dict(kwargs or {}),
                options=dict(options or {}),
                subtask_type=subtask_type,
                immutable=immutable,
            )
        self._app = app

    @property
    def name(self) -> str:
        return str(self["task"])

    @property
    def args(self) -> list[Any]:
        return list(self["args"])

    @property
    def kwargs(self) -> dict[str, Any]:
        return dict(self["kwargs"])

    @property
    def options(self) -> dict[str, Any]:
        return dict(self["options"])

    @property
    def immutable(self) -> bool:
        return bool(self.get("immutable"))

    def clone(
        self,
        args: tuple[Any, ...] | None = None,
        kwargs: dict[str, Any] | None = None,
        **options: Any,
    ) -> Signature:
        """A copy with ``args`` appended (prepended by callers passing results), kwargs merged."""
        sig = Signature(dict(self), app=self._app)
        if args and not self.immutable:
            sig["args"] = list(args) + list(sig["args"])
        if kwargs and not self.immutable:
            sig["kwargs"] = {**sig["kwargs"], **kwargs}
        sig["options"] = {**sig["options"], **options}
        return sig

    def set(self, **options: Any) -> Signature:
        self["options"] = {**self["options"], **options}
        return self

    def set_immutable(self, immutable: bool) -> None:
        self["immutable"] = immutable

    def link(self, callback: Signature) -> Signature:
        self["options"].setdefault("link", []).append(dict(callback))
        return callback

    def link_error(self, errback: Signature) -> Signature:
        self["options"].setdefault("link_error", []).append(dict(errback))
        return errback

    def _require_app(self) -> Celeriac:
        if self._app is None:
            raise RuntimeError(
                f"signature for {self.name!r} is not bound to an app; use app.signature(...)"
            )
        return self._app

    def apply_async(
        self,
        args: tuple[Any, ...] | list[Any] | None = None,
        kwargs: dict[str, Any] | None = None,
        **options: Any,
    ) -> AsyncResult[Any]:
        app = self._require_app()
        sig = self.clone(tuple(args or ()), kwargs, **options)
        opts = sig.options
        return app.send_task(sig.name, sig["args"], sig["kwargs"], **opts)

    def delay(self, *args: Any, **kwargs: Any) -> AsyncResult[Any]:
        return self.apply_async(args, kwargs)

    def __or__(self, other: Signature) -> Signature:  # type: ignore[override]
        return chain(self, other)

    def __repr__(self) -> str:
        args = ", ".join(
            [*map(repr, self["args"]), *(f"{k}={v!r}" for k, v in self["kwargs"].items())]
        )
        return f"{self.name}({args})"


def signature(
    task: str | dict[str, Any], *args: Any, app: Celeriac | None = None, **kw: Any
) -> Signature:
    return Signature(task, *args, app=app, **kw)


def _steps(sig: Signature) -> list[Signature]:
    if sig.get("subtask_type") == "chain":
        return [Signature(s, app=sig._app) for s in sig["kwargs"]["tasks"]]
    return [sig]


class _Chain(Signature):
    """``a | b | c``: each step gets the previous step's result as its first argument."""

    def apply_async(
        self,
        args: tuple[Any, ...] | list[Any] | None = None,
        kwargs: dict[str, Any] | None = None,
        **options: Any,
    ) -> AsyncResult[Any]:
        steps = [Signature(s, app=self._app) for s in self["kwargs"]["tasks"]]
        if not steps:
            raise ValueError("an empty chain cannot be applied")
        for step in steps:
            step["options"].setdefault("task_id", new_id())
        first, rest = steps[0], steps[1:]
        rest_embed = [dict(s) for s in reversed(rest)]
        first = first.clone(tuple(args or ()), kwargs)
        app = first._require_app() if first._app else self._require_app()
        opts = {**first.options, **options}
        last_id = steps[-1]["options"]["task_id"]
        app.send_task(first.name, first["args"], first["kwargs"], chain=rest_embed or None, **opts)
        return app.AsyncResult(last_id)


def chain(*tasks: Signature) -> Signature:
    """Run the signatures one after another, passing each result on."""
    flat: list[Signature] = []
    app = None
    for t in tasks:
        flat.extend(_steps(t))
        app = app or t._app
    return _Chain(
        "celery.chain", (), {"tasks": [dict(s) for s in flat]}, subtask_type="chain", app=app
    )
