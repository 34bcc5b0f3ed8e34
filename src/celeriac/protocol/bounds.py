"""Size bounds on what a worker decodes: the raw body, and the body once decompressed.

Anyone who can write to the broker can write a message, so a worker must not trust a body's
size, nor the size it claims to expand to. Decompression runs in chunks of :data:`CHUNK` bytes
and stops as soon as the output passes the limit: a 1 MB zlib stream of zeros that would expand
to 1 GiB costs the limit plus one chunk, not 1 GiB.
"""

from __future__ import annotations

import bz2
import zlib
from collections.abc import Callable

from celeriac.exceptions import DecodeError, MessageTooLarge

#: bytes of output produced per decompression step
CHUNK = 256 * 1024


def check_raw_size(size: int, limit: int | None) -> None:
    """Refuse a body of ``size`` bytes over ``limit`` (``broker_max_message_size``)."""
    if limit and size > limit:
        raise MessageTooLarge(f"message body is {size} bytes, over broker_max_message_size={limit}")


def _too_large(compression: str, limit: int) -> MessageTooLarge:
    return MessageTooLarge(
        f"body decompresses ({compression}) to more than {limit} bytes, over "
        f"broker_max_message_size={limit}; decompression stopped there"
    )


def _zlib(data: bytes, limit: int | None, compression: str) -> bytes:
    decoder = zlib.decompressobj()
    out: list[bytes] = []  # chunks, joined once: a growing bytearray would copy as it grows
    size = 0
    pending = data
    try:
        while not decoder.eof:
            chunk = decoder.decompress(pending, CHUNK)
            out.append(chunk)
            size += len(chunk)
            if limit and size > limit:
                raise _too_large(compression, limit)
            pending = decoder.unconsumed_tail
            # Input used up and the output not full: the inflater holds nothing more.
            if not pending and len(chunk) < CHUNK:
                break
    except zlib.error as exc:
        raise DecodeError(f"cannot decompress body ({compression}): {exc}") from exc
    if not decoder.eof:
        raise DecodeError(f"cannot decompress body ({compression}): truncated stream")
    return b"".join(out)


def _bz2(data: bytes, limit: int | None, compression: str) -> bytes:
    out: list[bytes] = []
    size = 0
    pending = data
    try:
        # bz2.decompress reads concatenated streams; so do we, one decompressor per stream.
        while pending:
            decoder = bz2.BZ2Decompressor()
            chunk = decoder.decompress(pending, CHUNK)
            while True:
                out.append(chunk)
                size += len(chunk)
                if limit and size > limit:
                    raise _too_large(compression, limit)
                if decoder.eof:
                    break
                if decoder.needs_input:
                    raise DecodeError(f"cannot decompress body ({compression}): truncated stream")
                chunk = decoder.decompress(b"", CHUNK)
            pending = decoder.unused_data
    except (OSError, ValueError, EOFError) as exc:
        raise DecodeError(f"cannot decompress body ({compression}): {exc}") from exc
    return b"".join(out)


_DECOMPRESSORS: dict[str, Callable[[bytes, int | None, str], bytes]] = {
    # kombu labels zlib streams application/x-gzip; both are read the same way.
    "application/x-gzip": _zlib,
    "application/x-zlib": _zlib,
    "application/x-bz2": _bz2,
}


def decompress(data: bytes, compression: str, limit: int | None) -> bytes:
    """``data`` decompressed, raising :class:`MessageTooLarge` once the output passes ``limit``
    (None or 0: no limit) and :class:`DecodeError` for an unknown or broken stream."""
    decoder = _DECOMPRESSORS.get(compression)
    if decoder is None:
        raise DecodeError(f"unknown compression {compression!r}")
    return decoder(data, limit, compression)
