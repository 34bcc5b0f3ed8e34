"""Result documents and exceptions as Celery stores them (``celery-task-meta-<id>``)."""

from __future__ import annotations

import builtins
import json
import sys
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
    """Rebuild a stored exception without importing anything a message names.

    The type is looked up among builtins, Celeriac's own errors, and modules this process has
    already imported; anything else becomes a :class:`RemoteTaskError` subclass with that name.
    """
    if not isinstance(data, dict) or "exc_type" not in data:
        return exc_mod.RemoteTaskError(data)
    name = str(data.get("exc_type"))
    module = str(data.get("exc_module") or "builtins")
    message = data.get("exc_message")
    args = tuple(message) if isinstance(message, list | tuple) else (message,)
    cls = _lookup(module, name)
    if cls is not None:
        try:
            return cls(*args)
        except Exception:
            try:
                inst = cls.__new__(cls)
                inst.args = args
                return inst
            except Exception:
                pass
    return _remote_type(module, name)(*args)


def _lookup(module: str, name: str) -> type[BaseException] | None:
    if module == _CELERY_EXC_MODULE or module == "celeriac.exceptions":
        obj = getattr(exc_mod, name, None)
    elif module == "builtins":
        obj = getattr(builtins, name, None)
    else:
        mod = sys.modules.get(module)
        obj = mod
        for part in name.split("."):
            obj = getattr(obj, part, None) if obj is not None else None
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
