"""Bounded decoding (protocol/bounds.py): a body is refused past the limit, raw or inflated,
and inflating stops there instead of producing the whole output."""

from __future__ import annotations

import bz2
import resource
import zlib

import pytest

from celeriac.exceptions import DecodeError, MessageTooLarge
from celeriac.protocol.bounds import CHUNK, check_raw_size, decompress
from celeriac.protocol.message import build_task_message, decode_body, read_headers
from celeriac.protocol.serializers import default_registry

ACCEPT = frozenset({"application/json"})
MiB = 1024 * 1024


def zlib_zeros(size: int) -> bytes:
    enc = zlib.compressobj(9)
    block = bytes(MiB)
    parts = [enc.compress(block) for _ in range(size // MiB)]
    return b"".join(parts) + enc.flush()


@pytest.mark.parametrize("ctype", ["application/x-zlib", "application/x-gzip"])
def test_zlib_bomb_stops_at_the_limit(ctype: str) -> None:
    bomb = zlib_zeros(64 * MiB)
    assert len(bomb) < 80 * 1024
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    with pytest.raises(MessageTooLarge, match=r"more than 1048576 bytes.*stopped there"):
        decompress(bomb, ctype, MiB)
    # ru_maxrss is in KiB: inflating all 64 MiB would raise it by that much.
    grown = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before
    assert grown < 32 * 1024


def test_bz2_bomb_stops_at_the_limit() -> None:
    bomb = bz2.compress(bytes(16 * MiB), 9)
    with pytest.raises(MessageTooLarge, match="application/x-bz2"):
        decompress(bomb, "application/x-bz2", MiB)


@pytest.mark.parametrize(
    ("ctype", "compress"),
    [("application/x-zlib", zlib.compress), ("application/x-bz2", bz2.compress)],
)
def test_round_trips_at_and_around_the_chunk_size(ctype: str, compress: object) -> None:
    for size in (0, 1, CHUNK - 1, CHUNK, CHUNK + 1, 3 * CHUNK):
        data = bytes(range(256)) * (size // 256) + b"x" * (size % 256)
        assert decompress(compress(data), ctype, size) == data  # type: ignore[operator]
        if size > 1:  # a limit of 0 means none
            with pytest.raises(MessageTooLarge):
                decompress(compress(data), ctype, size - 1)  # type: ignore[operator]


def test_concatenated_bz2_streams_decode_as_bz2_decompress_does() -> None:
    data = bz2.compress(b"abc") + bz2.compress(b"def")
    assert decompress(data, "application/x-bz2", None) == bz2.decompress(data) == b"abcdef"


@pytest.mark.parametrize(
    ("ctype", "data"),
    [
        ("application/x-zlib", zlib.compress(b"hello world")[:-3]),
        ("application/x-zlib", b"not zlib at all"),
        ("application/x-bz2", bz2.compress(b"hello world")[:-3]),
        ("application/x-bz2", b"not bz2 at all"),
        ("application/x-lzma", b"whatever"),
    ],
)
def test_broken_or_unknown_streams_are_decode_errors(ctype: str, data: bytes) -> None:
    with pytest.raises(DecodeError):
        decompress(data, ctype, None)


def test_raw_size_limit() -> None:
    check_raw_size(10, 10)
    check_raw_size(10**9, None)
    with pytest.raises(MessageTooLarge, match="11 bytes, over broker_max_message_size=10"):
        check_raw_size(11, 10)


def test_decode_body_applies_the_limit_to_compressed_task_bodies() -> None:
    msg = build_task_message(
        default_registry, task_name="t", task_id="1", args=["x" * 5000], compression="zlib"
    )
    headers = read_headers(msg, default_registry, ACCEPT)
    assert decode_body(msg, headers, default_registry, ACCEPT, max_size=6000)[0] == ["x" * 5000]
    assert msg.size < 200
    with pytest.raises(MessageTooLarge, match="application/x-zlib"):
        decode_body(msg, headers, default_registry, ACCEPT, max_size=4000)
    with pytest.raises(MessageTooLarge, match="message body is"):
        decode_body(msg, headers, default_registry, ACCEPT, max_size=msg.size - 1)
