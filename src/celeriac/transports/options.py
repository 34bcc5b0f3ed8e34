"""Transport options as typed, frozen objects: a misspelt option is an error, not a silent no-op.

Each transport declares its ``broker_transport_options`` (and, where they differ, its
``result_backend_transport_options``) as a frozen dataclass in ``transports/<name>/options.py``;
:func:`parse_options` builds one from the user's mapping. A key that is not a field raises
:class:`~celeriac.exceptions.ConfigurationError` with the closest known key. Values are converted
to the field's type (configs read from files or the environment give numbers as strings) and a
value that does not fit is an error naming the key.

Celery users bring kombu's option names with them. The names kombu documents for a transport
that mean nothing to Celeriac are listed on the options class as ``KOMBU_ONLY``: they are
accepted, logged once at INFO, and otherwise ignored.
"""

from __future__ import annotations

import dataclasses
import logging
import types
from collections.abc import Mapping
from typing import Any, Literal, TypeVar, Union, get_args, get_origin, get_type_hints

from celeriac.exceptions import ConfigurationError

logger = logging.getLogger("celeriac.transport")

OptionsT = TypeVar("OptionsT")

BROKER = "broker_transport_options"
BACKEND = "result_backend_transport_options"

#: kombu's ``Connection`` reads these from the transport options of every transport: its retry
#: policy for (re)connecting. Each of our transports reconnects with its own backoff.
KOMBU_RETRY = frozenset(
    {
        "max_retries",
        "interval_start",
        "interval_step",
        "interval_max",
        "connect_retries_timeout",
        "callback",
        "errback",
    }
)

#: ``(setting, scheme, key)`` already logged as ignored in this process
_logged: set[tuple[str, str, str]] = set()
_TRUE = frozenset({"1", "true", "yes", "on"})
_FALSE = frozenset({"0", "false", "no", "off"})


def parse_options(
    cls: type[OptionsT], given: Mapping[str, Any] | None, *, url: str, setting: str
) -> OptionsT:
    """An instance of the frozen dataclass ``cls`` from ``given`` (the user's mapping).

    ``url`` names the transport in messages (only its scheme is shown: a URL may hold a
    password); ``setting`` is the setting the mapping came from (:data:`BROKER`, :data:`BACKEND`).
    """
    scheme = url.partition("://")[0].lower() + "://"
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}  # type: ignore[arg-type]
    hints = _hints(cls)
    ignored: frozenset[str] = getattr(cls, "KOMBU_ONLY", frozenset())
    values: dict[str, Any] = {}
    for key, value in (given or {}).items():
        if key in fields:
            values[key] = _convert(value, hints[key], f"{setting} key {key!r} for {scheme}")
        elif key in ignored:
            if (setting, scheme, key) not in _logged:
                _logged.add((setting, scheme, key))
                logger.info(
                    "%s key %r is kombu's and means nothing to Celeriac's %s transport: ignored",
                    setting,
                    key,
                    scheme,
                )
        else:
            raise ConfigurationError(_unknown(str(key), setting, scheme, sorted(fields), ignored))
    return cls(**values)


def option_names(cls: type[Any]) -> list[str]:
    """The fields of an options class, in declaration order."""
    return [f.name for f in dataclasses.fields(cls) if f.init]


def _unknown(key: str, setting: str, scheme: str, known: list[str], ignored: frozenset[str]) -> str:
    message = f"unknown {setting} key {key!r} for {scheme}"
    import difflib  # only for this message

    close = difflib.get_close_matches(key, known, n=1, cutoff=0.6) or difflib.get_close_matches(
        key, sorted(ignored), n=1, cutoff=0.6
    )
    if close:
        return f"{message}; did you mean {close[0]!r}?"
    return f"{message}; known: {', '.join(known)}" if known else f"{message}; {scheme} takes none"


_hint_cache: dict[type[Any], dict[str, Any]] = {}


def _hints(cls: type[Any]) -> dict[str, Any]:
    hints = _hint_cache.get(cls)
    if hints is None:
        hints = _hint_cache[cls] = get_type_hints(cls)
    return hints


def _convert(value: Any, hint: Any, what: str) -> Any:
    """``value`` as type ``hint`` (float, int, bool, str, a Literal, a mapping, or X | None)."""
    origin = get_origin(hint)
    if origin in (Union, types.UnionType):
        args = get_args(hint)
        if value is None and type(None) in args:
            return None
        (inner,) = (a for a in args if a is not type(None))  # only "X | None" is used
        return _convert(value, inner, what)
    if origin is Literal:
        choices = get_args(hint)
        if value in choices:
            return value
        raise ConfigurationError(
            f"{what} must be one of {', '.join(map(repr, choices))}, not {value!r}"
        )
    if origin is Mapping or hint is Mapping:
        if isinstance(value, Mapping):
            # read-only: the options object is frozen, and so is what it holds
            return types.MappingProxyType(dict(value))
        raise ConfigurationError(f"{what} must be a mapping, not {value!r}")
    try:
        if hint is bool:
            return _to_bool(value)
        if hint is int:
            return _to_int(value)
        if hint is float:
            return _to_float(value)
        if hint is str and isinstance(value, str):
            return value
    except (TypeError, ValueError):
        pass
    kind = {bool: "true or false", int: "a whole number", float: "a number", str: "a string"}
    raise ConfigurationError(f"{what} must be {kind.get(hint, hint)}, not {value!r}")


def _to_bool(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    if isinstance(value, str) and value.strip().lower() in _TRUE | _FALSE:
        return value.strip().lower() in _TRUE
    raise ValueError(value)


def _to_int(value: Any) -> int:
    if isinstance(value, bool):  # True is an int to Python, never a count to a user
        raise TypeError(value)
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, str):
        return int(value.strip())
    raise TypeError(value)


def _to_float(value: Any) -> float:
    if isinstance(value, bool):
        raise TypeError(value)
    if isinstance(value, int | float | str):
        return float(value)
    raise TypeError(value)
