"""Body serializers keyed by name and by content type, and the ``accept_content`` gate.

JSON is always available, msgpack when the package is installed, pickle only when a user lists it
in ``accept_content`` (a pickle body runs code while it is decoded, so it is never accepted by
default).
"""

from __future__ import annotations

import base64
import bz2
import datetime as dt
import importlib.util
import json
import pickle
import sys
import uuid
import zlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from celeriac.exceptions import ConfigurationError, ContentDisallowed, DecodeError
from celeriac.protocol import bounds, fastjson
from celeriac.protocol.jsontext import encoder


@dataclass(frozen=True, slots=True)
class Serializer:
    name: str
    content_type: str
    content_encoding: str
    dumps: Callable[[Any], bytes]
    loads: Callable[[bytes], Any]
    #: The bytes Celery writes for a value, where ``dumps`` may spell the same value otherwise
    #: (the json serializer's orjson path): for text that is a key, not only read (a member of
    #: Celery's chord sorted set, which a header result's writers must spell alike).
    exact_dumps: Callable[[Any], bytes] | None = None


def _typed(marker: str, value: Any) -> dict[str, Any]:
    return {"__type__": marker, "__value__": value}


def _json_default(obj: Any) -> Any:
    # kombu's markers ({"__type__": ..., "__value__": ...}), so that Celery decodes these values
    # back to their types, and so do we (_json_hook). datetime is checked before date (a subclass).
    if isinstance(obj, dt.datetime):
        return _typed("datetime", obj.isoformat())
    if isinstance(obj, dt.date):
        return _typed("date", obj.isoformat())
    if isinstance(obj, dt.time):
        return _typed("time", obj.isoformat())
    # A Decimal exists only once its module is imported: looked up, not imported here.
    decimal = sys.modules.get("decimal")
    if decimal is not None and isinstance(obj, decimal.Decimal):
        return _typed("decimal", str(obj))
    if isinstance(obj, uuid.UUID):
        return _typed("uuid", {"hex": obj.hex})
    if isinstance(obj, bytes):
        try:
            return _typed("bytes", obj.decode("utf-8"))
        except UnicodeDecodeError:
            return _typed("base64", base64.b64encode(obj).decode("ascii"))
    if isinstance(obj, set | frozenset):
        return list(obj)  # one way, as before: kombu has no marker for sets
    raise TypeError(f"Object of type {type(obj).__name__} is not JSON serializable")


def _decimal(value: str) -> Any:
    import decimal  # on first use: most processes never see a Decimal

    return decimal.Decimal(value)


_DECODERS: dict[str, Callable[[Any], Any]] = {
    "datetime": dt.datetime.fromisoformat,
    "date": lambda v: dt.datetime.fromisoformat(v).date(),
    "time": dt.time.fromisoformat,
    "decimal": _decimal,
    "uuid": lambda v: uuid.UUID(**v),
    "bytes": lambda v: v.encode("utf-8"),
    "base64": lambda v: base64.b64decode(v.encode("ascii")),
}


def _json_hook(obj: dict[str, Any]) -> Any:
    # A dict of exactly these two keys with a marker we know is an encoded value; any other
    # dict (an unknown marker included) is left as it is rather than refused.
    if len(obj) == 2 and "__type__" in obj and "__value__" in obj:
        decode = _DECODERS.get(obj["__type__"])
        if decode is not None:
            return decode(obj["__value__"])
    return obj


_json_decoder = json.JSONDecoder(object_hook=_json_hook)


_kombu_json = encoder(ensure_ascii=False, separators=(", ", ": "), default=_json_default)
#: kombu's JSON text, or orjson's for a plain value (fastjson: the same value, spelled tighter)
_json_dumps = fastjson.bytes_encoder(_kombu_json)


def _kombu_json_dumps(obj: Any) -> bytes:
    return _kombu_json(obj).encode("utf-8")


def _json_loads(data: bytes) -> Any:
    return fastjson.loads_hooked(data, _json_decoder)


def _pickle_dumps(obj: Any) -> bytes:
    return pickle.dumps(obj, protocol=4)


def _pickle_loads(data: bytes) -> Any:
    return pickle.loads(data)


JSON = Serializer(
    "json", "application/json", "utf-8", _json_dumps, _json_loads, exact_dumps=_kombu_json_dumps
)
PICKLE = Serializer(
    "pickle", "application/x-python-serialize", "binary", _pickle_dumps, _pickle_loads
)


def _msgpack() -> Serializer | None:
    # Registered when installed, imported on first use: a process that never sees a msgpack
    # body does not carry the package (0.3 MB per worker process).
    if importlib.util.find_spec("msgpack") is None:
        return None

    def dumps(obj: Any) -> bytes:
        import msgpack

        return msgpack.packb(obj, use_bin_type=True, default=_json_default)  # type: ignore[no-any-return]

    def loads(data: bytes) -> Any:
        import msgpack

        return msgpack.unpackb(data, raw=False, object_hook=_json_hook)

    return Serializer("msgpack", "application/x-msgpack", "binary", dumps, loads)


COMPRESSIONS: dict[str, tuple[str, Callable[[bytes], bytes], Callable[[bytes], bytes]]] = {
    # kombu labels zlib streams application/x-gzip; we produce and read the same.
    "gzip": ("application/x-gzip", zlib.compress, zlib.decompress),
    "zlib": ("application/x-zlib", zlib.compress, zlib.decompress),
    "bzip2": ("application/x-bz2", bz2.compress, bz2.decompress),
}


class SerializerRegistry:
    """Serializers by name and content type."""

    def __init__(self) -> None:
        self._by_name: dict[str, Serializer] = {}
        self._by_type: dict[str, Serializer] = {}
        self._accept_cache: dict[tuple[str, ...], frozenset[str]] = {}

    def register(self, serializer: Serializer) -> None:
        self._by_name[serializer.name] = serializer
        self._by_type[serializer.content_type] = serializer
        self._accept_cache.clear()

    def get(self, name: str) -> Serializer:
        try:
            return self._by_name[name]
        except KeyError:
            hint = " (install the 'msgpack' package)" if name == "msgpack" else ""
            known = ", ".join(sorted(self._by_name))
            raise ConfigurationError(f"unknown serializer {name!r}{hint}; known: {known}") from None

    def content_types(self, names: Iterable[str]) -> frozenset[str]:
        """Content types for ``accept_content`` entries (names or content types).

        Memoized: workers ask for every message they read.
        """
        key = tuple(names)
        cached = self._accept_cache.get(key)
        if cached is None:
            cached = self._accept_cache[key] = self._content_types(key)
        return cached

    def _content_types(self, names: tuple[str, ...]) -> frozenset[str]:
        types = set()
        for entry in names:
            if "/" in entry:
                types.add(entry)
            else:
                types.add(self.get(entry).content_type)
        return frozenset(types)

    def dumps(
        self, obj: Any, name: str, compression: str | None = None
    ) -> tuple[bytes, str, str, str | None]:
        """Serialize ``obj``: ``(body, content_type, content_encoding, compression_type)``."""
        ser = self.get(name)
        body = ser.dumps(obj)
        if compression is None:
            return body, ser.content_type, ser.content_encoding, None
        try:
            ctype, compress, _ = COMPRESSIONS[compression]
        except KeyError:
            raise ConfigurationError(
                f"unknown compression {compression!r}; known: {', '.join(COMPRESSIONS)}"
            ) from None
        return compress(body), ser.content_type, ser.content_encoding, ctype

    def loads(
        self,
        body: bytes,
        content_type: str,
        accept: frozenset[str],
        compression: str | None = None,
        *,
        max_size: int | None = None,
    ) -> Any:
        """Decode a body, refusing content types not in ``accept`` before touching the bytes.

        ``max_size`` bounds the body as it came and as it decompresses
        (:class:`~celeriac.exceptions.MessageTooLarge` past it).
        """
        if content_type not in accept:
            raise ContentDisallowed(
                f"refusing to decode content type {content_type!r}: it is not in accept_content "
                f"({', '.join(sorted(accept))})"
            )
        ser = self._by_type.get(content_type)
        if ser is None:
            raise DecodeError(f"no serializer for content type {content_type!r}")
        bounds.check_raw_size(len(body), max_size)
        if compression:
            body = bounds.decompress(body, str(compression), max_size)
        try:
            return ser.loads(body)
        except Exception as exc:
            raise DecodeError(f"cannot decode {content_type} body: {exc}") from exc


def _build_default() -> SerializerRegistry:
    reg = SerializerRegistry()
    reg.register(JSON)
    reg.register(PICKLE)
    mp = _msgpack()
    if mp is not None:
        reg.register(mp)
    return reg


default_registry = _build_default()
