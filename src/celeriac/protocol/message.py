"""Task messages in Celery's protocol v2: build them, and read v2 or v1 ones.

A :class:`Message` is what brokers carry: headers, properties and the serialized body. Workers
route on the headers alone (:func:`read_headers`) and decode the body only in the process that
runs the task (:func:`decode_body`).
"""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from celeriac._fork import generation
from celeriac.exceptions import DecodeError, EncodeError, ProtocolError
from celeriac.protocol.serializers import SerializerRegistry
from celeriac.protocol.timeutil import parse_iso, to_iso

EMPTY_EMBED: dict[str, Any] = {"callbacks": None, "errbacks": None, "chain": None, "chord": None}
_REPR_LIMIT = 1024


@dataclass(slots=True)
class Message:
    """One message as a broker stores it: AMQP-style headers, properties and body bytes."""

    headers: dict[str, Any]
    properties: dict[str, Any]
    body: bytes
    content_type: str = "application/json"
    content_encoding: str = "utf-8"

    @property
    def task_id(self) -> str | None:
        tid = self.headers.get("id") or self.properties.get("correlation_id")
        return str(tid) if tid is not None else None

    @property
    def size(self) -> int:
        return len(self.body)


@dataclass(slots=True)
class TaskHeaders:
    """What a worker needs to route and gate a task, read without decoding the body."""

    task: str
    id: str
    root_id: str | None = None
    parent_id: str | None = None
    group: str | None = None
    group_index: int | None = None
    retries: int = 0
    eta: float | None = None
    expires: float | None = None
    time_limit: float | None = None
    soft_time_limit: float | None = None
    ignore_result: bool = False
    shadow: str | None = None
    origin: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    # Set for protocol v1 messages, whose body held everything: (args, kwargs, embed).
    v1_body: tuple[list[Any], dict[str, Any], dict[str, Any]] | None = None


def _short_repr(obj: Any) -> str:
    text = repr(obj)
    return text if len(text) <= _REPR_LIMIT else text[: _REPR_LIMIT - 3] + "..."


def origin_name() -> str:
    """Celery's ``origin`` header: ``gen<pid>@<host>``, made once per process (a fork has a
    pid of its own) rather than with two system calls per message."""
    global _origin
    if _origin[0] != generation():  # a counter a fork handler bumps: no system call
        _origin = (generation(), f"gen{os.getpid()}@{socket.gethostname()}")
    return _origin[1]


_origin: tuple[int, str] = (-1, "")


def new_id() -> str:
    """A random (version 4) UUID as text, as ``str(uuid.uuid4())`` gives it, in a fifth of the
    time (every send makes one or two: the task id, the Redis delivery tag): the random bytes
    are read 64 ids at a time. A forked child reads its own (the pool belongs to the fork
    generation that filled it)."""
    global _pool
    gen, ids = _pool
    if gen == generation():
        found = next(ids, None)  # one list iterator: threads never get the same id
        if found is not None:
            return found
    raw = os.urandom(16 * _POOL).hex()
    fresh = iter([_format(raw[i : i + 32]) for i in range(32, 32 * _POOL, 32)])
    _pool = (generation(), fresh)
    return _format(raw[:32])


def _format(x: str) -> str:
    # 122 random bits: the version nibble is 4, the variant's two high bits are 10.
    return f"{x[:8]}-{x[8:12]}-4{x[13:16]}-{_VARIANT[int(x[16], 16) & 3]}{x[17:20]}-{x[20:]}"


_POOL = 64
_pool: tuple[int, Iterator[str]] = (-1, iter(()))
_VARIANT = "89ab"


def _encode_error(
    registry: SerializerRegistry,
    serializer: str,
    task_name: str,
    args: tuple[Any, ...] | list[Any],
    kwargs: dict[str, Any],
    exc: Exception,
) -> EncodeError:
    """Name the task and the argument the serializer refused (it names neither)."""
    named = [(f"argument {i}", v) for i, v in enumerate(args)]
    named += [(f"keyword argument {k!r}", v) for k, v in kwargs.items()]
    for what, value in named:
        try:
            registry.dumps(value, serializer)
        except (TypeError, ValueError, OverflowError) as one:
            return EncodeError(
                f"cannot send {task_name}: {what} ({type(value).__name__}) cannot be encoded "
                f"with the {serializer} serializer: {one}"
            )
    return EncodeError(f"cannot send {task_name}: {exc}")


def build_task_message(
    registry: SerializerRegistry,
    *,
    task_name: str,
    task_id: str,
    args: tuple[Any, ...] | list[Any] = (),
    kwargs: dict[str, Any] | None = None,
    serializer: str = "json",
    compression: str | None = None,
    eta: float | None = None,
    expires: float | None = None,
    retries: int = 0,
    root_id: str | None = None,
    parent_id: str | None = None,
    group_id: str | None = None,
    group_index: int | None = None,
    time_limit: float | None = None,
    soft_time_limit: float | None = None,
    shadow: str | None = None,
    ignore_result: bool = False,
    callbacks: list[dict[str, Any]] | None = None,
    errbacks: list[dict[str, Any]] | None = None,
    chain: list[dict[str, Any]] | None = None,
    chord: dict[str, Any] | None = None,
    extra_headers: dict[str, Any] | None = None,
    origin: str | None = None,
    reply_to: str = "",
    priority: int = 0,
    now: float | None = None,
) -> Message:
    """Build a protocol-v2 task message exactly as Celery 5.x lays it out."""
    kwargs = kwargs or {}
    embed = {"callbacks": callbacks, "errbacks": errbacks, "chain": chain, "chord": chord}
    try:
        body, ctype, cenc, ctype_compression = registry.dumps(
            [list(args), kwargs, embed], serializer, compression
        )
    except (TypeError, ValueError, OverflowError) as exc:
        raise _encode_error(registry, serializer, task_name, args, kwargs, exc) from exc
    headers: dict[str, Any] = {
        "lang": "py",
        "task": task_name,
        "id": task_id,
        "shadow": shadow,
        "eta": to_iso(eta),
        "expires": to_iso(expires),
        "group": group_id,
        "group_index": group_index,
        "retries": retries,
        "timelimit": [time_limit, soft_time_limit],
        "root_id": root_id or task_id,
        "parent_id": parent_id,
        "argsrepr": _short_repr(tuple(args)),
        "kwargsrepr": _short_repr(kwargs),
        "origin": origin or origin_name(),
        "ignore_result": ignore_result,
        "replaced_task_nesting": 0,
        "stamped_headers": None,
        "stamps": {},
    }
    if ctype_compression:
        headers["compression"] = ctype_compression
    if extra_headers:
        headers.update(extra_headers)
    properties: dict[str, Any] = {
        "correlation_id": task_id,
        "reply_to": reply_to,
        "delivery_mode": 2,
        "priority": priority,
    }
    if expires is not None and now is not None:
        properties["expiration"] = str(max(0, int((expires - now) * 1000)))
    return Message(headers, properties, body, ctype, cenc)


def _limit(value: Any) -> float | None:
    return None if value is None else float(value)


_V2_KNOWN = frozenset(
    [
        "lang",
        "task",
        "id",
        "root_id",
        "parent_id",
        "group",
        "group_index",
        "retries",
        "eta",
        "expires",
        "timelimit",
        "shadow",
        "origin",
        "ignore_result",
        "argsrepr",
        "kwargsrepr",
        "replaced_task_nesting",
        "stamped_headers",
        "stamps",
        "compression",
    ]
)


def read_headers(
    message: Message, registry: SerializerRegistry, accept: frozenset[str]
) -> TaskHeaders:
    """Routing facts of a v2 message from its headers; a v1 message needs its body decoded."""
    h = message.headers
    if "task" not in h:
        return _read_v1(message, registry, accept)
    try:
        limits = h.get("timelimit") or (None, None)
        hard, soft = ([*list(limits), None, None])[:2]
        task_id = h.get("id") or message.properties.get("correlation_id")
        if not task_id:
            raise ProtocolError("task message has no id")
        return TaskHeaders(
            task=str(h["task"]),
            id=str(task_id),
            root_id=h.get("root_id"),
            parent_id=h.get("parent_id"),
            group=h.get("group"),
            group_index=h.get("group_index"),
            retries=int(h.get("retries") or 0),
            eta=parse_iso(h.get("eta")),
            expires=parse_iso(h.get("expires")),
            time_limit=_limit(hard),
            soft_time_limit=_limit(soft),
            ignore_result=bool(h.get("ignore_result", False)),
            shadow=h.get("shadow"),
            origin=h.get("origin"),
            extra={k: v for k, v in h.items() if k not in _V2_KNOWN},
        )
    except ProtocolError:
        raise
    except (TypeError, ValueError, OverflowError) as exc:  # overflow: retries=inf, eta=1e400
        raise ProtocolError(f"malformed task headers: {exc}") from exc


def _read_v1(message: Message, registry: SerializerRegistry, accept: frozenset[str]) -> TaskHeaders:
    body = registry.loads(message.body, message.content_type, accept)
    if not isinstance(body, dict) or "task" not in body or "id" not in body:
        raise DecodeError("message has no 'task' header and its body is not a v1 task dict")
    embed = {
        "callbacks": body.get("callbacks"),
        "errbacks": body.get("errbacks"),
        "chain": None,
        "chord": body.get("chord"),
    }
    try:
        hard, soft = ([*list(body.get("timelimit") or []), None, None])[:2]
        return TaskHeaders(
            task=str(body["task"]),
            id=str(body["id"]),
            root_id=body.get("root_id"),
            parent_id=body.get("parent_id"),
            group=body.get("group") or body.get("taskset"),
            group_index=body.get("group_index"),
            retries=int(body.get("retries") or 0),
            eta=parse_iso(body.get("eta")),
            expires=parse_iso(body.get("expires")),
            time_limit=_limit(hard),
            soft_time_limit=_limit(soft),
            v1_body=(list(body.get("args") or []), dict(body.get("kwargs") or {}), embed),
        )
    except (TypeError, ValueError, OverflowError) as exc:
        raise ProtocolError(f"malformed v1 task body: {exc}") from exc


def decode_body(
    message: Message,
    headers: TaskHeaders,
    registry: SerializerRegistry,
    accept: frozenset[str],
    *,
    max_size: int | None = None,
) -> tuple[list[Any], dict[str, Any], dict[str, Any]]:
    """``(args, kwargs, embed)`` of a task message, checked for shape.

    ``max_size`` bounds the body, raw and decompressed (``broker_max_message_size``).
    """
    if headers.v1_body is not None:
        return headers.v1_body
    body = registry.loads(
        message.body,
        message.content_type,
        accept,
        message.headers.get("compression"),
        max_size=max_size,
    )
    if not isinstance(body, list | tuple) or len(body) not in (2, 3):
        raise DecodeError("task body is not [args, kwargs, embed]")
    args, kwargs = body[0], body[1]
    embed = body[2] if len(body) == 3 else {}
    if not isinstance(args, list | tuple) or not isinstance(kwargs, dict):
        raise DecodeError("task body args must be a list and kwargs an object")
    if not isinstance(embed, dict):
        embed = {}
    return list(args), kwargs, {**EMPTY_EMBED, **embed}
