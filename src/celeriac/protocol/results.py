"""Result documents and exceptions as Celery stores them (``celery-task-meta-<id>``)."""

from __future__ import annotations

import builtins
import json
import sys
from collections.abc import Mapping
from typing import Any

from celeriac import exceptions as exc_mod
from celeriac.protocol.timeutil import to_iso, utcnow
from celeriac.states import READY_STATES

# Exceptions Celery raises under its own module path map onto ours, and ours are written under
# Celery's path, so a Celery client reading a Celeriac result sees the names it knows.
_CELERY_EXC_MODULE = "celery.exceptions"
_CELERY_NAMES = {
    "NotRegistered",
    "TaskRevokedError",
    "WorkerLostError",
    "TimeLimitExceeded",
    "SoftTimeLimitExceeded",
    "Retry",
    "Reject",
    "Ignore",
    "ChordError",
}
_remote_types: dict[tuple[str, str], type[exc_mod.RemoteTaskError]] = {}


def exception_to_dict(exc: BaseException) -> dict[str, Any]:
    cls = type(exc)
    module = cls.__module__
    if module == "celeriac.exceptions" and cls.__name__ in _CELERY_NAMES:
        module = _CELERY_EXC_MODULE
    if isinstance(exc, exc_mod.RemoteTaskError) and exc.exc_module:
        module = exc.exc_module
    args = _jsonable_args(exc.args)
    return {"exc_type": cls.__qualname__, "exc_message": args, "exc_module": module}


def _jsonable_args(args: tuple[Any, ...]) -> list[Any]:
    # Celery's ensure_serializable: keep what encodes (dicts and lists too), repr() the rest.
    out: list[Any] = []
    for arg in args:
        if arg is None or isinstance(arg, str | int | float | bool):
            out.append(arg)
            continue
        try:
            json.dumps(arg)
        except (TypeError, ValueError, RecursionError):
            out.append(repr(arg))
        else:
            out.append(arg)
    return out


def exception_from_dict(data: Any) -> BaseException:
    """Rebuild a stored exception without running code a result names.

    The type is looked up among builtins, Celeriac's own errors, and modules this process has
    already imported (never importing one, and reading their namespaces without attribute
    hooks); anything else becomes a :class:`RemoteTaskError` subclass with that name. Builtin
    and Celeriac types are called as usual; any other type is made without running its
    ``__new__`` or ``__init__`` (a result is data anyone who can write to the backend wrote,
    and a constructor may do anything), carrying the stored arguments as ``args``.
    """
    if not isinstance(data, dict) or "exc_type" not in data:
        return exc_mod.RemoteTaskError(data)
    name = str(data.get("exc_type"))
    module = str(data.get("exc_module") or "builtins")
    message = data.get("exc_message")
    args = tuple(message) if isinstance(message, list | tuple) else (message,)
    cls = _lookup(module, name)
    if cls is not None:
        trusted = module in ("builtins", "celeriac.exceptions", _CELERY_EXC_MODULE)
        try:
            return cls(*args) if trusted else _without_constructor(cls, args)
        except Exception:
            try:
                return _without_constructor(cls, args)
            except Exception:
                pass
    return _remote_type(module, name)(*args)


#: BaseException's own ``args`` descriptor
_ARGS: Any = vars(BaseException)["args"]


def _without_constructor(cls: type[BaseException], args: tuple[Any, ...]) -> BaseException:
    """An instance of ``cls`` made by its nearest builtin base, so that no ``__new__`` or
    ``__init__`` of its own runs; ``args`` set through the builtin descriptor (not a
    ``__setattr__`` of its own)."""
    base = next(c for c in cls.__mro__ if c.__module__ == "builtins")
    inst: BaseException = base.__new__(cls, *args)  # type: ignore[call-overload]
    _ARGS.__set__(inst, args)
    return inst


def _lookup(module: str, name: str) -> type[BaseException] | None:
    if module == _CELERY_EXC_MODULE or module == "celeriac.exceptions":
        obj = vars(exc_mod).get(name)
    elif module == "builtins":
        obj = vars(builtins).get(name)
    else:
        # Namespaces read directly: getattr could run a module's __getattr__ (PEP 562) or a
        # class's descriptors and metaclass hooks.
        obj = sys.modules.get(module)
        for part in name.split("."):
            space = getattr(obj, "__dict__", None) if obj is not None else None
            obj = space.get(part) if isinstance(space, Mapping) else None
    if isinstance(obj, type) and issubclass(obj, BaseException):
        return obj
    return None


def _remote_type(module: str, name: str) -> type[exc_mod.RemoteTaskError]:
    key = (module, name)
    cls = _remote_types.get(key)
    if cls is None:
        safe = name.rsplit(".", 1)[-1] or "RemoteTaskError"
        cls = type(safe, (exc_mod.RemoteTaskError,), {"exc_module": module, "exc_type": name})
        _remote_types[key] = cls
    return cls


def make_meta(
    task_id: str,
    status: str,
    result: Any = None,
    *,
    traceback: str | None = None,
    children: list[Any] | None = None,
    group_id: str | None = None,
    parent_id: str | None = None,
    extended: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """A result document with Celery's fields; exceptions become exception dicts."""
    if isinstance(result, BaseException):
        result = exception_to_dict(result)
    meta: dict[str, Any] = {
        "status": status,
        "result": result,
        "traceback": traceback,
        "children": children or [],
        "date_done": to_iso(utcnow()) if status in READY_STATES else None,
        "task_id": task_id,
    }
    if group_id is not None:
        meta["group_id"] = group_id
    if parent_id is not None:
        meta["parent_id"] = parent_id
    if extended:
        meta.update(extended)
    return meta


def pending_meta(task_id: str) -> dict[str, Any]:
    return {
        "status": "PENDING",
        "result": None,
        "traceback": None,
        "children": [],
        "date_done": None,
        "task_id": task_id,
    }
