"""Running a workflow in this process (``.apply()`` and ``task_always_eager``)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from celeriac import states
from celeriac.canvas.plan import flatten
from celeriac.canvas.signature import Signature, chain, chord, group
from celeriac.exceptions import ChordError
from celeriac.protocol.message import new_id
from celeriac.protocol.results import make_meta
from celeriac.result import AsyncResult, EagerResult, GroupResult

if TYPE_CHECKING:
    from celeriac.app import Celeriac


def apply_eagerly(
    app: Celeriac, sig: Signature, args: list[Any], kwargs: dict[str, Any]
) -> AsyncResult[Any]:
    if isinstance(sig, chain):
        result: AsyncResult[Any] | None = None
        for i, step in enumerate(sig.tasks):
            step_args = args if i == 0 else [result.get(propagate=False)] if result else []
            step_result = apply_eagerly(app, step, step_args, kwargs if i == 0 else {})
            step_result.parent = result
            result = step_result
            if result.failed():
                _errbacks(app, sig, result)
                break
        assert result is not None
        return result
    if isinstance(sig, group):
        members = flatten(sig.tasks)
        return GroupResult(
            sig.options.get("task_id") or new_id(),
            [apply_eagerly(app, m, args, kwargs) for m in members],
            app=app,
        )
    if isinstance(sig, chord):
        header = GroupResult(
            new_id(), [apply_eagerly(app, m, args, kwargs) for m in flatten(sig.header)], app=app
        )
        failed = next((r for r in header.results if r.failed()), None)
        if failed is not None:
            exc = ChordError(f"Dependency {failed.id} raised {failed.info!r}")
            body_id = sig.body.options.get("task_id") or new_id()
            out: AsyncResult[Any] = EagerResult(
                body_id, make_meta(body_id, states.FAILURE, exc), exc
            )
        else:
            out = apply_eagerly(app, sig.body, [header.get()], {})
        out.parent = header
        return out
    task = app.tasks[sig.name]
    call_args = list(sig["args"]) if sig.immutable else [*args, *sig["args"]]
    call_kwargs = dict(sig["kwargs"]) if sig.immutable else {**sig["kwargs"], **kwargs}
    result = task.apply(call_args, call_kwargs, task_id=sig.options.get("task_id"))
    if result.successful():
        for cb in sig.options.get("link") or []:
            apply_eagerly(app, Signature.from_dict(cb, app), [result.get()], {})
    else:
        _errbacks(app, sig, result)
    return result


def _errbacks(app: Celeriac, sig: Signature, failed: AsyncResult[Any]) -> None:
    for eb in sig.options.get("link_error") or []:
        errback = Signature.from_dict(eb, app)
        apply_eagerly(app, errback, [] if errback.immutable else [failed.id], {})
