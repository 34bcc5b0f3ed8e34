"""fastjson decodes exactly as the standard library does, with orjson on or off."""

from __future__ import annotations

import datetime as dt
import decimal
import json
import math
import os
import uuid
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from celeriac.protocol import fastjson, serializers

if os.environ.get("CI") == "true":  # a dev dependency: CI proves the orjson path, never skips it
    import orjson  # noqa: F401
else:
    pytest.importorskip("orjson")

_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**80), max_value=2**80)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
    max_leaves=12,
)


def _same(a: Any, b: Any) -> bool:
    """Equal, type for type (1 is not 1.0), NaN equal to NaN."""
    if type(a) is not type(b):
        return False
    if isinstance(a, float):
        return (math.isnan(a) and math.isnan(b)) or a == b
    if isinstance(a, list):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, dict):
        return list(a) == list(b) and all(_same(a[k], b[k]) for k in a)
    return bool(a == b)


@settings(max_examples=300, deadline=None)
@given(_values, st.booleans())
def test_loads_gives_what_json_gives(value: Any, ascii_only: bool) -> None:
    text = json.dumps(value, ensure_ascii=ascii_only)
    assert _same(fastjson.loads(text.encode("utf-8")), json.loads(text))
    assert _same(fastjson.loads(text), json.loads(text))


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (b"[12345678901234567890123]", [12345678901234567890123]),  # past 64 bits: exact
        (b"[-9999999999999999999]", [-9999999999999999999]),
        (b'{"a": NaN}', {"a": math.nan}),
        (b'"\\ud800"', "\ud800"),  # a lone surrogate
        (b'{"a": 1, "a": 2}', {"a": 2}),
    ],
)
def test_what_orjson_reads_otherwise_goes_to_json(raw: bytes, expected: Any) -> None:
    assert _same(fastjson.loads(raw), expected)
    assert _same(serializers.JSON.loads(raw), expected)


def test_markers_decode_to_their_types() -> None:
    value = {
        "when": dt.datetime(2026, 12, 7, 3, 4, 5, tzinfo=dt.timezone.utc),
        "price": decimal.Decimal("1.10"),
        "id": uuid.UUID("6f1c3a52-0d3e-4c5c-9c1e-3f0b8a9d2e71"),
        "raw": b"\xff\x00",
        "text": b"caf\xc3\xa9",
    }
    data = serializers.JSON.dumps(value)
    assert serializers.JSON.loads(data) == value
    # the marker spelled with escapes is still a marker
    escaped = data.replace(b'"__type__"', b'"\\u005f\\u005ftype__"')
    assert serializers.JSON.loads(escaped) == value


def test_invalid_json_raises_json_error() -> None:
    with pytest.raises(json.JSONDecodeError):
        fastjson.loads(b"{nope")
    with pytest.raises(ValueError):
        serializers.JSON.loads(b"[1,")


def test_orjson_decodes_when_installed(monkeypatch: pytest.MonkeyPatch) -> None:
    import orjson

    seen: list[bytes] = []

    class Counting:
        JSONDecodeError = orjson.JSONDecodeError

        @staticmethod
        def loads(data: bytes) -> Any:
            seen.append(data)
            return orjson.loads(data)

    assert fastjson.ENABLED
    monkeypatch.setattr(fastjson, "orjson", Counting)
    body = b'[[1, "a"], {"k": 2.5}, {"callbacks": null}]'
    assert serializers.JSON.loads(body) == [[1, "a"], {"k": 2.5}, {"callbacks": None}]
    assert fastjson.loads(b'{"x": [true]}') == {"x": [True]}
    assert seen == [body, b'{"x": [true]}']


# -- encoding ---------------------------------------------------------------------------------

_kombu_text = serializers._kombu_json  # the json encoder the serializer falls back to
_fast_bytes = fastjson.bytes_encoder(_kombu_text)
_fast_text = fastjson.text_encoder(_kombu_text)

_keys = st.text() | st.integers() | st.none() | st.booleans() | st.floats(allow_nan=False)
_encodable = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**80), max_value=2**80)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text()  # lone surrogates included
    | st.datetimes()
    | st.uuids()
    | st.binary(max_size=8),
    lambda inner: (
        st.lists(inner, max_size=4)
        | st.tuples(inner, inner)
        | st.dictionaries(_keys, inner, max_size=4)
    ),
    max_leaves=12,
)


def _outcome(dumps: Any, value: Any) -> Any:
    try:
        return ("ok", serializers.JSON.loads(dumps(value)))
    except Exception as exc:  # the two paths must fail alike
        return ("error", type(exc))


def _same_outcome(a: Any, b: Any) -> bool:
    return a[0] == b[0] and (a[1] is b[1] if a[0] == "error" else _same_json(a[1], b[1]))


def _same_json(a: Any, b: Any) -> bool:
    # _same, plus the decoded types kombu's markers give back
    if type(a) is not type(b):
        return False
    if isinstance(a, list):
        return len(a) == len(b) and all(_same_json(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, dict):
        return list(a) == list(b) and all(_same_json(a[k], b[k]) for k in a)
    return _same(a, b)


@settings(max_examples=400, deadline=None)
@given(_encodable)
def test_encoding_reads_back_as_json_would(value: Any) -> None:
    def kombu(v: Any) -> bytes:
        return _kombu_text(v).encode("utf-8")

    assert _same_outcome(_outcome(_fast_bytes, value), _outcome(kombu, value))
    assert _same_outcome(_outcome(_fast_text, value), _outcome(kombu, value))


def test_a_plain_value_is_written_by_orjson() -> None:
    value = {"a": [1, 2.5, None, True, "é"], "b": ("x",)}
    assert _fast_bytes(value) == '{"a":[1,2.5,null,true,"é"],"b":["x"]}'.encode()
    assert _fast_text(value) == '{"a":[1,2.5,null,true,"é"],"b":["x"]}'


class _Text(str):
    pass


_deep: list[Any] = []
for _ in range(300):
    _deep = [_deep]


@pytest.mark.parametrize(
    "value",
    [
        [math.nan, 1],  # orjson: null
        {"t": [math.inf, -math.inf]},
        [2**64, 1],  # orjson refuses
        ["\ud800", 1],  # orjson refuses; json writes it
        {1: "a", "b": 2},  # json writes "1"; orjson refuses
        [dt.datetime(2026, 1, 2, 3, 4, 5)],  # kombu's marker, not orjson's text
        [uuid.UUID(int=7)],
        [_Text("x"), 1],
        [_deep, 1],  # orjson refuses past 255 levels
    ],
    ids=[
        "nan",
        "inf",
        "big-int",
        "surrogate",
        "int-key",
        "datetime",
        "uuid",
        "str-subclass",
        "deep",
    ],
)
def test_anything_else_is_written_by_json(value: Any) -> None:
    assert ", " in _kombu_text(value)  # so orjson's text could not pass for it
    assert _fast_text(value) == _kombu_text(value)


def test_a_cycle_is_refused_as_json_refuses_it() -> None:
    cycle: list[Any] = []
    cycle.append(cycle)
    with pytest.raises(ValueError, match="Circular reference"):
        _fast_bytes(cycle)


def test_without_orjson_every_text_is_kombus(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(fastjson, "ENABLED", False)
    value = {"a": [1, 2.5, None, True, "é"]}
    assert _fast_text(value) == _kombu_text(value) == '{"a": [1, 2.5, null, true, "é"]}'
    assert serializers.JSON.dumps(value) == _kombu_text(value).encode()


def test_exact_dumps_is_kombus_bytes() -> None:
    value = [1, "g-0", "SUCCESS", {"x": 1.5}]
    assert serializers.JSON.dumps(value) == b'[1,"g-0","SUCCESS",{"x":1.5}]'
    assert serializers.JSON.exact_dumps is not None
    assert serializers.JSON.exact_dumps(value) == b'[1, "g-0", "SUCCESS", {"x": 1.5}]'
