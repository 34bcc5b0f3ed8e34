"""Turning a signature into the messages that start it: one implementation for clients and
workers alike (a worker continuing a chain or firing a chord body plans the same way).

* a task: one message;
* a chain: its first step, with the remaining steps (reversed) in the message's ``chain`` embed;
  what an enclosing workflow asked of the chain (group membership, a chord to count towards)
  goes on its last step;
* a group: one message per member, tagged with the group id and index (nested groups flatten);
* a chord: the header as a group whose members carry the body in their ``chord`` embed, plus a
  counter in the result backend sized to the header (see :mod:`celeriac.worker.chords`).

Ids are assigned up front (:func:`freeze`), so the caller's result handles exist at once.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from celeriac.canvas.signature import Signature, chain, chord, group
from celeriac.exceptions import InvalidTaskArguments, ProtocolError
from celeriac.protocol.message import new_id
from celeriac.protocol.publication import Publication
from celeriac.result import AsyncResult, GroupResult
from celeriac.sending import CallTemplate, check_options, publish, reply_to_of

if TYPE_CHECKING:
    from celeriac.app import Celeriac

#: Options a message can carry; anything else in a signature's options is not for the wire.
PUBLISH_OPTIONS = frozenset(
    {
        "countdown",
        "eta",
        "expires",
        "queue",
        "exchange",
        "exchange_type",
        "routing_key",
        "priority",
        "headers",
        "link",
        "link_error",
        "serializer",
        "compression",
        "ignore_result",
        "time_limit",
        "soft_time_limit",
        "shadow",
        "root_id",
        "parent_id",
        "group_id",
        "group_index",
        "chain",
        "chord",
        "task_id",
        "reply_to",
    }
)
#: What an enclosing workflow asks of the part that finishes a nested one.
TERMINAL = ("group_id", "group_index", "chord")


@dataclass
class Plan:
    publishes: list[Publication] = field(default_factory=list)
    #: (group id, header size) counters to create before any header message is sent
    chord_starts: list[tuple[str, int]] = field(default_factory=list)


def freeze(app: Celeriac, sig: Signature) -> AsyncResult[Any]:
    """Assign ids throughout ``sig`` (in place) and return its result handle."""
    opts = sig.options
    if isinstance(sig, chain):
        steps = sig.tasks
        parent: AsyncResult[Any] | None = None
        for step in steps:
            result = freeze(app, step)
            result.parent = parent
            parent = result
        sig["kwargs"]["tasks"] = [dict(s) for s in steps]
        assert parent is not None, "an empty chain"
        return parent
    if isinstance(sig, group):
        gid = opts.setdefault("task_id", new_id())
        members = flatten(sig.tasks)
        results = [freeze(app, m) for m in members]
        sig["kwargs"]["tasks"] = [dict(m) for m in members]
        return GroupResult(gid, results, app=app)
    if isinstance(sig, chord):
        header = group(flatten(sig.header), app=app)
        header_result = freeze(app, header)
        sig["kwargs"]["header"] = dict(header)
        body = sig.body
        result = freeze(app, body)
        sig["kwargs"]["body"] = dict(body)
        result.parent = header_result
        return result
    task_id = opts.setdefault("task_id", new_id())
    if not opts.get("reply_to"):
        # As Celery's freeze: every step carries the client's reply queue, so a worker that
        # sends the next step (a chain's, a chord's body) addresses its result to the client
        # (``rpc://``), whichever worker, Celery's or ours, sends it.
        reply_to = reply_to_of(None, lambda: app.backend.reply_to())
        if reply_to:
            opts["reply_to"] = reply_to
    return AsyncResult(task_id, app, task_name=sig.name)


def flatten(members: list[Signature]) -> list[Signature]:
    """Members of nested groups become members of the enclosing group."""
    out: list[Signature] = []
    for m in members:
        out.extend(flatten(m.tasks) if isinstance(m, group) else [m])
    return out


def plan_signature(
    app: Celeriac,
    sig: Signature,
    args: list[Any],
    kwargs: dict[str, Any],
    options: dict[str, Any],
    plan: Plan,
) -> None:
    """Add the messages that start ``sig`` (called with ``args`` first) to ``plan``."""
    if isinstance(sig, chain):
        _plan_chain(app, sig, args, kwargs, options, plan)
    elif isinstance(sig, group):
        _plan_group(app, sig, args, kwargs, options, plan)
    elif isinstance(sig, chord):
        _plan_chord(app, sig, args, kwargs, options, plan)
    else:
        _plan_task(app, sig, args, kwargs, options, plan)


def _plan_task(
    app: Celeriac,
    sig: Signature,
    args: list[Any],
    kwargs: dict[str, Any],
    options: dict[str, Any],
    plan: Plan,
) -> None:
    if not sig.immutable:
        args, kwargs = [*args, *sig["args"]], {**sig["kwargs"], **kwargs}
    else:
        args, kwargs = list(sig["args"]), dict(sig["kwargs"])
    opts = {k: v for k, v in {**sig.options, **options}.items() if k in PUBLISH_OPTIONS}
    opts.setdefault("task_id", new_id())
    plan.publishes.append(app.prepare_message(sig.name, args, kwargs, **opts))


def _plan_chain(
    app: Celeriac,
    sig: chain,
    args: list[Any],
    kwargs: dict[str, Any],
    options: dict[str, Any],
    plan: Plan,
) -> None:
    freeze(app, sig)
    steps = sig.tasks
    opts = {**sig.options, **options}
    terminal = {k: opts.pop(k) for k in TERMINAL if k in opts}
    opts.pop("task_id", None)
    link, link_error = opts.pop("link", None), opts.pop("link_error", None)
    if link:
        steps[-1].options["link"] = [*steps[-1].options.get("link", []), *link]
    if link_error:  # an error anywhere in the chain reaches the chain's errbacks
        for step in steps:
            step.options["link_error"] = [*step.options.get("link_error", []), *link_error]
    steps[-1].options.update(terminal)
    first, rest = steps[0], steps[1:]
    opts["chain"] = [dict(s) for s in reversed(rest)] or None
    plan_signature(app, first, args, kwargs, opts, plan)


def _plan_group(
    app: Celeriac,
    sig: group,
    args: list[Any],
    kwargs: dict[str, Any],
    options: dict[str, Any],
    plan: Plan,
) -> None:
    freeze(app, sig)
    opts = {**sig.options, **options}
    gid = opts.pop("task_id")
    chord_body = opts.pop("chord", None)
    for index, member in enumerate(sig.tasks):
        member_opts = {**opts, "group_id": gid, "group_index": index}
        if chord_body is not None:
            member_opts["chord"] = chord_body
        plan_signature(app, member, args, kwargs, member_opts, plan)


def _plan_chord(
    app: Celeriac,
    sig: chord,
    args: list[Any],
    kwargs: dict[str, Any],
    options: dict[str, Any],
    plan: Plan,
) -> None:
    freeze(app, sig)
    opts = {**sig.options, **options}
    header = group.from_dict(sig["kwargs"]["header"], app)
    members = header.tasks  # type: ignore[attr-defined]
    body = sig.body
    # What an enclosing workflow asked of this chord applies to its body, which finishes it.
    for key in (*TERMINAL, "chain", "link", "link_error"):
        if key in opts:
            value = opts.pop(key)
            if key in ("link", "link_error"):
                value = [*body.options.get(key, []), *value]
            body.options[key] = value
    body["chord_size"] = len(members)
    gid = header.options["task_id"]
    opts.pop("task_id", None)
    if not members:
        plan_signature(app, body, [[]], {}, {}, plan)
        return
    plan.chord_starts.append((gid, len(members)))
    header.options.update(opts)
    assert isinstance(header, group)
    _plan_group(app, header, args, kwargs, {"task_id": gid, "chord": dict(body)}, plan)


def apply_canvas(
    app: Celeriac,
    sig: Signature,
    args: list[Any],
    kwargs: dict[str, Any],
    options: dict[str, Any],
) -> AsyncResult[Any]:
    """Send a workflow from a client: counters first, then every starting message."""
    result = freeze(app, sig)
    plan = Plan()
    plan_signature(app, sig, args, kwargs, options, plan)
    send_plan(app, plan)
    return result


def send_many(
    app: Celeriac, signatures: Iterable[Signature], options: dict[str, Any]
) -> list[AsyncResult[Any]]:
    """Send every signature of ``signatures`` with ``options`` (which win over each one's own,
    as a group's do over its members'): all messages are built before any is sent, then go to
    the broker in one publish (:func:`~celeriac.sending.publish`, one round trip per
    ``max_batch`` messages). Returns the result handles in the order given."""
    check_options(k for k in options if k not in PUBLISH_OPTIONS)
    if "task_id" in options:  # it would give every call the same id
        raise TypeError("send_many: task_id names one call; set it on its signature instead")
    sigs = list(signatures)
    plan = Plan()
    results: list[AsyncResult[Any]] = []
    templates: dict[Any, CallTemplate] = {}
    for index, sig in enumerate(sigs):
        try:
            results.append(_plan_call(app, sig, options, plan, templates))
        except (ProtocolError, InvalidTaskArguments) as exc:
            # Raised before anything was sent: say which call, and that the batch is whole.
            note = f"call {index} of {len(sigs)} given to send_many; none of them was sent"
            raise type(exc)(f"{exc} ({note})") from exc
    send_plan(app, plan)
    return results


def _plan_call(
    app: Celeriac,
    sig: Signature,
    options: dict[str, Any],
    plan: Plan,
    templates: dict[Any, CallTemplate],
) -> AsyncResult[Any]:
    """One signature of :func:`send_many`. A task call is not frozen in place (the same
    signature given twice is two calls, as two ``apply_async()`` are; an id frozen before is
    kept); its arguments are checked against the task's parameters when it is registered
    here, as ``delay()`` checks them. Calls of one task with the same options share their
    :class:`~celeriac.sending.CallTemplate` (``templates``): what ``prepare_message``
    resolves per call (route, priority, serializer, reply queue, ...) is resolved once."""
    if not isinstance(sig, Signature):
        raise TypeError(f"send_many takes signatures (task.s(...)), not {type(sig).__name__}")
    if sig.subtask_type is not None:  # a workflow: planned as apply_async plans it
        result = freeze(app, sig)
        plan_signature(app, sig, [], {}, dict(options), plan)
        return result
    name, args, kwargs = sig.name, sig["args"], sig["kwargs"]
    opts = {k: v for k, v in {**sig.options, **options}.items() if k in PUBLISH_OPTIONS}
    task_id = opts.pop("task_id", None) or new_id()
    task = app.tasks.get(name)
    if task is not None:
        task.check_arguments(args, kwargs)
    try:
        key: Any = (name, *sorted(opts.items()))
        template = templates.get(key)
    except TypeError:  # an unhashable option (link=[...], headers={...}): not shared
        key, template = None, None
    if template is None:
        template = app.call_template(name, _task=task, **opts)
        if key is not None:
            templates[key] = template
    plan.publishes.append(template.publication(args, kwargs, task_id))
    return AsyncResult(task_id, app, task_name=name)


def send_plan(app: Celeriac, plan: Plan) -> None:
    """Chord counters first (a header task may finish before the last message is sent), then
    every message of ``plan``."""
    if plan.chord_starts:
        backend = app.backend
        for gid, size in plan.chord_starts:
            backend.chord_start(gid, size)
    if plan.publishes:
        publish(app, app.broker, plan.publishes)
