"""Firing a chord's body once its header is complete.

The result backend counts header results (each once, however often a header task is
delivered) and hands the completed chord to exactly one caller; that caller builds the body's
messages here. A failed header task fails the body with a :class:`ChordError` and runs the
body's errbacks instead, as Celery does.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from celeriac import states
from celeriac.backends.base import EncodedResult
from celeriac.canvas.plan import Plan, freeze, plan_signature
from celeriac.canvas.signature import Signature, chain
from celeriac.exceptions import ChordError
from celeriac.protocol.results import make_meta
from celeriac.tasks.context import Request
from celeriac.worker.errbacks import run_errbacks

if TYPE_CHECKING:
    from celeriac.app import Celeriac
    from celeriac.backends.base import ResultBackend


def fire(
    app: Celeriac, backend: ResultBackend, group_id: str, body_data: dict[str, Any]
) -> tuple[Plan, list[EncodedResult]]:
    """The messages (and, on failure, the results) that finish a chord completed in
    ``backend``."""
    body = Signature.from_dict(body_data, app)
    if body.options.get("group_id") == group_id:
        del body.options[
            "group_id"
        ]  # Celery tags the body with the header's group; it is not a member
    body.pop("chord_size", None)
    values: list[Any] = []
    plan = Plan()
    for task_id, state, data, *_route in backend.chord_results(group_id):
        doc = backend.decode_meta(data)
        if state != states.SUCCESS:
            err = doc.get("result") or {}
            message = ", ".join(map(str, err.get("exc_message") or []))
            exc = ChordError(f"Dependency {task_id} raised {err.get('exc_type')}({message!r})")
            return plan, _fail_body(app, backend, body, exc, plan)
        values.append(doc.get("result"))
    plan_signature(app, body, [values], {}, {}, plan)
    return plan, []


def _fail_body(
    app: Celeriac, backend: ResultBackend, body: Signature, exc: ChordError, plan: Plan
) -> list[EncodedResult]:
    freeze(app, body)
    encode = backend.encode_meta
    results = [
        EncodedResult(tid, states.FAILURE, encode(make_meta(tid, states.FAILURE, exc)))
        for tid in _ids(body)
    ]
    first_id = results[0][0] if results else None
    errbacks = body.options.get("link_error")
    # The body never ran: its errbacks get a request made from the body's signature (Celery's
    # chord_error_from_stack does the same), and the old form the body's id.
    request = Request(
        id=first_id, task=body.name, args=body.args, kwargs=body.kwargs, errbacks=errbacks
    )
    run_errbacks(
        app,
        errbacks,
        request,
        exc,
        None,
        lambda eb: plan_signature(app, eb, [] if eb.immutable else [first_id], {}, {}, plan),
    )
    return results


def _ids(sig: Signature) -> list[str]:
    if isinstance(sig, chain):
        return [tid for step in sig.tasks for tid in _ids(step)]
    task_id = sig.options.get("task_id")
    return [task_id] if task_id else []
