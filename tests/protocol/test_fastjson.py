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
