"""Signatures and workflows: a task call, a chain, a group or a chord, packed as data.

Every kind is a ``dict`` with Celery's keys (``task``, ``args``, ``kwargs``, ``options``,
``subtask_type``, ``immutable``), so it crosses the wire as it is and a Celery client's canvas
decodes into the same objects. Workflows keep their parts in ``kwargs`` as Celery does:
``{"tasks": [...]}`` for chains and groups, ``{"header": ..., "body": ...}`` for chords.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from celeriac.app import Celeriac
    from celeriac.result import AsyncResult


class Signature(dict[str, Any]):
    """A task name with arguments and options, to be called later or elsewhere."""

    subtask_type: str | None = None

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
            super().__init__(copy.deepcopy(dict(task)))
            self.setdefault("args", [])
            self.setdefault("kwargs", {})
            self.setdefault("options", {})
            self.setdefault("subtask_type", None)
            self.setdefault("immutable", False)
            app = app or getattr(task, "_app", None)
        else:
            super().__init__(
                task=task,
                args=list(args or ()),
                kwargs=dict(kwargs or {}),
                options=dict(options or {}),
                subtask_type=subtask_type or self.subtask_type,
                immutable=immutable,
            )
        self._app = app

    @classmethod
    def from_dict(cls, data: dict[str, Any], app: Celeriac | None = None) -> Signature:
        """The right kind of signature for a dict (as decoded from a message)."""
        kind = {"chain": chain, "group": group, "chord": chord}.get(
            data.get("subtask_type") or "", Signature
        )
        sig: Signature = dict.__new__(kind)  # type: ignore[arg-type]
        Signature.__init__(sig, data, app=app)
        return sig

    # -- fields ---------------------------------------------------------------------------------
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
        return self["options"]  # type: ignore[no-any-return]

    @property
    def immutable(self) -> bool:
        return bool(self.get("immutable"))

    @property
    def app(self) -> Celeriac | None:
        return self._app

    def _require_app(self) -> Celeriac:
        """This signature's app, else (built by name, as Celery code does) the current one."""
        if self._app is not None:
            return self._app
        from celeriac.current import current_app

        return current_app()

    # -- building -------------------------------------------------------------------------------
    def clone(
        self,
        args: tuple[Any, ...] | list[Any] | None = None,
        kwargs: dict[str, Any] | None = None,
        **options: Any,
    ) -> Signature:
        """A copy with ``args`` put first (partial application) and kwargs/options merged."""
        sig = Signature.from_dict(self, self._app)
        if args and not sig.immutable:
            sig["args"] = [*args, *sig["args"]]
        if kwargs and not sig.immutable:
            sig["kwargs"] = {**sig["kwargs"], **kwargs}
        sig["options"] = {**sig["options"], **options}
        return sig

    def set(self, **options: Any) -> Signature:
        """Set apply options (``queue``, ``countdown``, ``priority``...) in place."""
        self["options"] = {**self["options"], **options}
        return self

    def set_immutable(self, immutable: bool) -> None:
        self["immutable"] = immutable

    def link(self, callback: dict[str, Any]) -> dict[str, Any]:
        """Run ``callback`` with this task's result after it succeeds."""
        self["options"].setdefault("link", []).append(dict(callback))
        return callback

    def link_error(self, errback: dict[str, Any]) -> dict[str, Any]:
        """Run ``errback`` (with the failed task's id) if this task fails."""
        self["options"].setdefault("link_error", []).append(dict(errback))
        return errback

    def freeze(self) -> AsyncResult[Any]:
        """Assign ids now, so the result handle exists before the call is sent."""
        from celeriac.canvas.plan import freeze

        return freeze(self._require_app(), self)

    # -- calling --------------------------------------------------------------------------------
    def apply_async(
        self,
        args: tuple[Any, ...] | list[Any] | None = None,
        kwargs: dict[str, Any] | None = None,
        **options: Any,
    ) -> AsyncResult[Any]:
        """Send it: the same options as ``Task.apply_async``."""
        from celeriac.canvas.plan import apply_canvas

        app = self._require_app()
        if app.conf.task_always_eager:
            return self.apply(args, kwargs, **options)
        return apply_canvas(app, self, list(args or ()), dict(kwargs or {}), options)

    def delay(self, *args: Any, **kwargs: Any) -> AsyncResult[Any]:
        return self.apply_async(args, kwargs)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        """Call the task here, now, like calling the function."""
        app = self._require_app()
        sig = self.clone(args, kwargs)
        return app.tasks[sig.name](*sig["args"], **sig["kwargs"])

    def apply(
        self,
        args: tuple[Any, ...] | list[Any] | None = None,
        kwargs: dict[str, Any] | None = None,
        **options: Any,
    ) -> AsyncResult[Any]:
        """Run it here, now, as workers would (see :mod:`celeriac.worker.eager`), and return
        the result handle with every member's outcome."""
        from celeriac.canvas.plan import Plan, freeze, plan_signature
        from celeriac.worker.eager import eager_scope, run_eagerly

        app = self._require_app()
        plan = Plan()
        with eager_scope():  # freezing too: no reply queue is opened for an eager run
            handle = freeze(app, self)
            plan_signature(app, self, list(args or ()), dict(kwargs or {}), options, plan)
        return run_eagerly(app, plan.publishes, handle, chord_starts=plan.chord_starts)

    # -- composing ------------------------------------------------------------------------------
    def __or__(self, other: Any) -> Signature:  # type: ignore[override]
        if not isinstance(other, Signature):
            return NotImplemented
        return chain(self, other)

    def __repr__(self) -> str:
        args = [repr(a) for a in self["args"]]
        args += [f"{k}={v!r}" for k, v in self["kwargs"].items()]
        return f"{self.name}({', '.join(args)}){'!' if self.immutable else ''}"


def _app_of(sigs: Iterable[Signature]) -> Celeriac | None:
    return next((s.app for s in sigs if s.app is not None), None)


def _as_sigs(tasks: tuple[Any, ...]) -> list[Signature]:
    if len(tasks) == 1 and not isinstance(tasks[0], dict):
        tasks = tuple(tasks[0])  # group([a, b]) as well as group(a, b)
    return [t if isinstance(t, Signature) else Signature.from_dict(t) for t in tasks]


class _TaskList(Signature):
    """A workflow whose parts are a list of signatures in ``kwargs["tasks"]`` (Celery's form)."""

    def _init_tasks(
        self, members: list[Signature], app: Celeriac | None, options: dict[str, Any]
    ) -> None:
        kind = str(self.subtask_type)
        Signature.__init__(
            self,
            f"celery.{kind}",
            (),
            {"tasks": [dict(s) for s in members]},
            options,
            subtask_type=kind,
            app=app or _app_of(members),
        )

    @property
    def tasks(self) -> list[Signature]:
        return [Signature.from_dict(t, self._app) for t in self["kwargs"]["tasks"]]

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        """``chain(...)()``, ``group(...)()``: send it, as Celery does (a workflow has no
        function to call here)."""
        return self.apply_async(args, kwargs)


class chain(_TaskList):
    """``chain(a, b, c)`` or ``a | b | c``: each step gets the previous result first."""

    subtask_type = "chain"

    def __init__(self, *tasks: Any, app: Celeriac | None = None, **options: Any) -> None:
        steps: list[Signature] = []
        for sig in _as_sigs(tasks):
            steps.extend(sig.tasks if isinstance(sig, chain) else [sig])
        self._init_tasks(_upgrade_groups(steps), app, options)

    def __or__(self, other: Any) -> Signature:  # type: ignore[override]
        if not isinstance(other, Signature):
            return NotImplemented
        return chain(*self.tasks, other, app=self._app, **self.options)

    def __repr__(self) -> str:
        return " | ".join(repr(t) for t in self.tasks)


def _upgrade_groups(steps: list[Signature]) -> list[Signature]:
    """A group followed by another step is a chord (the step gets the list of results), and a
    chord followed by a step carries that step on in its body."""
    out: list[Signature] = []
    for step in steps:
        prev = out[-1] if out else None
        if isinstance(prev, group):
            out[-1] = chord(prev.tasks, step, app=prev.app or step.app, **prev.options)
        elif isinstance(prev, chord):
            out[-1] = chord(prev.header, prev.body | step, app=prev.app, **prev.options)
        else:
            out.append(step)
    return out


class group(_TaskList):
    """``group(a, b, c)``: run in parallel; the result is a :class:`GroupResult`."""

    subtask_type = "group"

    def __init__(self, *tasks: Any, app: Celeriac | None = None, **options: Any) -> None:
        self._init_tasks(_as_sigs(tasks), app, options)

    def __or__(self, other: Any) -> Signature:  # type: ignore[override]
        if not isinstance(other, Signature):
            return NotImplemented
        return chord(self.tasks, other, app=self._app or other.app, **self.options)

    def __repr__(self) -> str:
        return f"group({', '.join(repr(t) for t in self.tasks)})"


class chord(Signature):
    """``chord(header, body)``: run the header in parallel, then the body once, with the list
    of header results in header order. ``chord(header)(body)`` sends it at once."""

    subtask_type = "chord"

    def __init__(
        self,
        header: Any,
        body: Signature | dict[str, Any] | None = None,
        *,
        app: Celeriac | None = None,
        **options: Any,
    ) -> None:
        members = header.tasks if isinstance(header, group) else _as_sigs((header,))
        body_sig = None if body is None else Signature.from_dict(dict(body), app)
        super().__init__(
            "celery.chord",
            (),
            {
                "header": dict(group(members)),
                "body": dict(body_sig) if body_sig else None,
                "kwargs": {},
            },
            options,
            subtask_type="chord",
            app=app or _app_of([*members, *([body_sig] if body_sig else [])]),
        )

    @property
    def header(self) -> list[Signature]:
        header = Signature.from_dict(self["kwargs"]["header"], self._app)
        assert isinstance(header, group)
        return header.tasks

    @property
    def body(self) -> Signature:
        data = self["kwargs"].get("body")
        if data is None:
            raise ValueError("this chord has no body yet: call chord(header)(body)")
        return Signature.from_dict(data, self._app)

    def __call__(self, body: Signature | None = None, **options: Any) -> Any:  # type: ignore[override]
        """``chord(header)(body)``: set the body and send."""
        if body is not None:
            self["kwargs"]["body"] = dict(body)
            self._app = self._app or body.app
        return self.apply_async(**options)

    def __or__(self, other: Any) -> Signature:  # type: ignore[override]
        if not isinstance(other, Signature):
            return NotImplemented
        return chord(self.header, self.body | other, app=self._app, **self.options)

    def __repr__(self) -> str:
        body = self["kwargs"].get("body")
        return f"chord([{', '.join(repr(t) for t in self.header)}], {body and repr(self.body)})"


def signature(
    task: str | dict[str, Any], *args: Any, app: Celeriac | None = None, **kw: Any
) -> Signature:
    """A signature by task name, or the right kind of signature for a dict."""
    if isinstance(task, dict):
        return Signature.from_dict(task, app)
    return Signature(task, *args, app=app, **kw)


maybe_signature = signature
