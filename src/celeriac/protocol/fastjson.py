"""JSON through orjson when it is installed (the ``fast`` extra), else with :mod:`json`.

Decoding: what comes out is what :mod:`json` would give, value for value (a task body or a
result document: 1.9-2.4 us per decode with :mod:`json`, 0.45 us with orjson). orjson reads
integers past 64 bits as floats and refuses ``NaN``, ``Infinity`` and lone surrogates, which
:mod:`json` reads; so a text with a run of 19 digits goes to :mod:`json`, and so does one orjson
refuses (which then raises :mod:`json`'s own error). A decode that needs an object hook (kombu's
``__type__`` markers) goes to :mod:`json` whenever the text may hold a marker.

Encoding (:func:`text_encoder`, :func:`bytes_encoder`): orjson writes a text that reads back as
the same value as :mod:`json`'s, only spelled tighter (no space after ``,`` and ``:``, UTF-8
where :mod:`json` may write ``\\u`` escapes, ``1e16`` for ``1e+16``): a Redis envelope in 0.5
us instead of 5.7. It does so only for a :func:`plain` value; anything else (a ``NaN``, which
orjson would write as ``null``; a ``datetime`` or ``UUID``, which it would write in its own way
where :mod:`json` calls ``default``; a subclass; a key that is not a string) goes to the
:mod:`json` encoder given, and so does what orjson refuses (an integer past 64 bits, a lone
surrogate). Without orjson, every text is :mod:`json`'s, kombu's bytes exactly.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

try:
    import orjson
except ImportError:  # pragma: no cover - the extra is installed in development
    orjson = None  # type: ignore[assignment]

#: Whether orjson is installed to do the work.
ENABLED = orjson is not None
#: Every digit to "0", everything else to a space: a run of 19 digits is then a plain substring
#: search (1.4 us on a 900-byte Redis envelope; a regular expression took 23 us).
_DIGITS = bytes(48 if 48 <= i <= 57 else 32 for i in range(256))
_LONG = b"0" * 19


def loads(data: bytes | str) -> Any:
    """``json.loads(data)``."""
    if ENABLED and not _long_number(data):
        try:
            return orjson.loads(data)
        except orjson.JSONDecodeError:
            pass  # NaN, a lone surrogate, not UTF-8 ...: the standard library decides
    return json.loads(data)


def loads_hooked(data: bytes | str, decoder: json.JSONDecoder) -> Any:
    """``decoder.decode(data)`` for a decoder with an object hook for kombu's markers: through
    orjson when the text cannot hold one (no ``__type__``, no escape that could spell it)."""
    if ENABLED:
        if isinstance(data, str):
            maybe = "__type__" in data or "\\u" in data
        else:
            maybe = b"__type__" in data or b"\\u" in data
        if not maybe and not _long_number(data):
            try:
                return orjson.loads(data)
            except orjson.JSONDecodeError:
                pass
    text = data.decode("utf-8") if isinstance(data, bytes | bytearray) else data
    return decoder.decode(text)


def _long_number(data: bytes | str) -> bool:
    raw = data.encode("utf-8", "surrogatepass") if isinstance(data, str) else data
    return _LONG in raw.translate(_DIGITS)


#: What :func:`plain` looks into: deeper goes to json (orjson refuses past 255 levels; a cycle
#: reaches this depth, and json refuses it as it always has).
_DEPTH = 64
_SCALARS = frozenset({str, int, bool, type(None)})


def plain(value: Any, depth: int = 0) -> bool:
    """Whether ``value`` holds only what orjson and :mod:`json` write as the same value: a
    ``str``, ``int``, ``bool``, ``None``, a finite ``float``, and lists, tuples and dicts with
    ``str`` keys of them (exact types: a subclass may encode itself otherwise)."""
    kind = type(value)
    if kind in _SCALARS:
        return True
    if kind is float:
        return bool(value - value == 0.0)  # NaN for NaN and the infinities
    if depth >= _DEPTH:
        return False
    if kind is dict:
        for key, item in value.items():
            if type(key) is not str:
                return False
            if type(item) not in _SCALARS and not plain(item, depth + 1):
                return False
        return True
    if kind is list or kind is tuple:
        for item in value:
            if type(item) not in _SCALARS and not plain(item, depth + 1):
                return False
        return True
    return False


def bytes_encoder(fallback: Callable[[Any], str]) -> Callable[[Any], bytes]:
    """A ``dumps(obj) -> bytes``: orjson's UTF-8 text for a :func:`plain` value it accepts,
    else ``fallback(obj)`` encoded (``fallback`` is a :mod:`json` encoder and decides what
    any other value becomes, or raises)."""

    def dumps(obj: Any) -> bytes:
        if ENABLED and plain(obj):
            try:
                return orjson.dumps(obj)
            except orjson.JSONEncodeError:  # an integer past 64 bits, a lone surrogate
                pass
        return fallback(obj).encode("utf-8")

    return dumps


def text_encoder(fallback: Callable[[Any], str]) -> Callable[[Any], str]:
    """:func:`bytes_encoder` giving text. (The two bodies are written out rather than sharing a
    helper: the extra call cost 0.3 us of an envelope's 2.9.)"""

    def dumps(obj: Any) -> str:
        if ENABLED and plain(obj):
            try:
                return orjson.dumps(obj).decode("utf-8")
            except orjson.JSONEncodeError:
                pass
        return fallback(obj)

    return dumps
