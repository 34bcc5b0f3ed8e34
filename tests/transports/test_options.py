"""The shared transport-options parser: unknown keys are errors with a hint, values are converted
to the field's type, kombu-only names are accepted and logged once. The per-transport option
sets are tested in ``tests/transports/<name>/test_options.py``."""

from __future__ import annotations

import dataclasses
import logging
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

import pytest

from celeriac.exceptions import ConfigurationError
from celeriac.transports.amqp.options import AMQPOptions
from celeriac.transports.memcached.options import MemcachedOptions
from celeriac.transports.memory.options import MemoryOptions
from celeriac.transports.options import BACKEND, BROKER, option_names, parse_options
from celeriac.transports.redis.options import RedisBackendOptions, RedisOptions
from celeriac.transports.sqlite.options import SQLiteOptions

ALL = [
    MemoryOptions,
    SQLiteOptions,
    RedisOptions,
    RedisBackendOptions,
    AMQPOptions,
    MemcachedOptions,
]


@dataclass(frozen=True, slots=True)
class Sample:
    ratio: float = 1.0
    count: int = 2
    flag: bool = False
    name: str = "n"
    limit: int | None = None
    mode: Literal["a", "b"] = "a"
    extra: Mapping[str, Any] = field(default_factory=dict)

    KOMBU_ONLY: ClassVar[frozenset[str]] = frozenset({"fanout_prefix"})


@dataclass(frozen=True, slots=True)
class Empty:
    pass


def parse(given: Mapping[str, Any], url: str = "sample://") -> Sample:
    return parse_options(Sample, given, url=url, setting=BROKER)


def test_no_options_give_the_defaults() -> None:
    assert parse({}) == Sample()
    assert parse_options(Sample, None, url="sample://", setting=BROKER) == Sample()


def test_a_misspelt_key_is_an_error_naming_it_the_transport_and_the_closest_key() -> None:
    with pytest.raises(ConfigurationError) as err:
        parse({"rato": 2})
    assert str(err.value) == (
        "unknown broker_transport_options key 'rato' for sample://; did you mean 'ratio'?"
    )


def test_an_unknown_key_with_nothing_close_lists_the_known_ones() -> None:
    with pytest.raises(ConfigurationError, match="known: count, extra, flag, limit, mode"):
        parse({"zzz": 1})
    with pytest.raises(ConfigurationError, match="for none://; none:// takes none"):
        parse_options(Empty, {"zzz": 1}, url="none://", setting=BACKEND)


def test_the_message_shows_the_scheme_never_the_url() -> None:
    with pytest.raises(ConfigurationError) as err:
        parse({"rato": 2}, url="sample://user:secret@host/0")
    assert "secret" not in str(err.value) and "for sample://;" in str(err.value)


def test_values_are_converted_to_the_field_type() -> None:
    got = parse(
        {"ratio": "0.5", "count": 3.0, "flag": "yes", "name": "x", "limit": "7", "mode": "b"}
    )
    assert got == Sample(ratio=0.5, count=3, flag=True, name="x", limit=7, mode="b")
    assert isinstance(got.ratio, float) and isinstance(got.count, int)
    assert parse({"ratio": 2}).ratio == 2.0 and isinstance(parse({"ratio": 2}).ratio, float)
    assert parse({"flag": 0}).flag is False and parse({"flag": "off"}).flag is False
    assert parse({"limit": None}).limit is None


def test_a_mapping_value_is_copied_and_read_only() -> None:
    given = {"password": "pw"}
    got = parse({"extra": given})
    given["password"] = "changed"
    assert got.extra == {"password": "pw"}
    with pytest.raises(TypeError):
        got.extra["password"] = "x"  # type: ignore[index]


@pytest.mark.parametrize(
    ("key", "value", "expected"),
    [
        ("ratio", "fast", "must be a number, not 'fast'"),
        ("ratio", True, "must be a number, not True"),
        ("ratio", None, "must be a number, not None"),
        ("count", 2.5, "must be a whole number, not 2.5"),
        ("count", "many", "must be a whole number, not 'many'"),
        ("count", False, "must be a whole number, not False"),
        ("flag", "maybe", "must be true or false, not 'maybe'"),
        ("flag", 2, "must be true or false, not 2"),
        ("name", 5, "must be a string, not 5"),
        ("limit", "none", "must be a whole number, not 'none'"),
        ("mode", "c", "must be one of 'a', 'b', not 'c'"),
        ("extra", [1], "must be a mapping, not [1]"),
    ],
)
def test_a_bad_value_is_an_error_naming_the_key(key: str, value: Any, expected: str) -> None:
    with pytest.raises(ConfigurationError) as err:
        parse({key: value})
    assert str(err.value) == f"broker_transport_options key {key!r} for sample:// {expected}"


def test_the_object_is_frozen() -> None:
    with pytest.raises(dataclasses.FrozenInstanceError):
        parse({}).ratio = 3.0  # type: ignore[misc]


def test_a_kombu_only_key_is_accepted_and_logged_once_at_info(
    caplog: pytest.LogCaptureFixture,
) -> None:
    url = f"once{uuid.uuid4().hex[:8]}://"  # a scheme of its own: logged once per process
    with caplog.at_level(logging.INFO, logger="celeriac.transport"):
        assert parse({"fanout_prefix": True}, url=url) == Sample()
        assert parse({"fanout_prefix": False}, url=url) == Sample()
    [record] = [r for r in caplog.records if "fanout_prefix" in r.getMessage()]
    assert record.levelno == logging.INFO
    assert "ignored" in record.getMessage() and url in record.getMessage()


def test_a_misspelt_kombu_only_key_gets_its_hint_too() -> None:
    with pytest.raises(ConfigurationError, match="did you mean 'fanout_prefix'"):
        parse({"fanout_prefx": True})


@pytest.mark.parametrize("cls", ALL, ids=lambda c: c.__name__)
def test_kombu_only_names_are_never_fields(cls: type[Any]) -> None:
    assert set(option_names(cls)).isdisjoint(cls.KOMBU_ONLY)


@pytest.mark.parametrize("cls", ALL, ids=lambda c: c.__name__)
def test_every_options_class_is_frozen_and_slotted(cls: type[Any]) -> None:
    assert cls.__dataclass_params__.frozen  # type: ignore[attr-defined]
    assert "__slots__" in cls.__dict__ and not hasattr(cls(), "__dict__")
