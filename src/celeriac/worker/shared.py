"""Memory a prefork supervisor shares with the children it forks later: anonymous ``mmap``.

What ``multiprocessing``'s ``RawArray`` gave, without importing ``multiprocessing`` into every
process of the worker (1.4 MB of RSS each, measured on a ``-c 2`` worker), and without its
heap, which zero-filled every array on creation and so made all of it resident (512 KB for the
revoked ids' ring alone). An anonymous mapping is zero from the start,
shared with every child forked after it is made, and costs memory only where written.

Reads and writes of one aligned 8-byte cell are single loads and stores, as with ctypes; the
callers that need more (a whole record) use a sequence number (a seqlock), as before.
"""

from __future__ import annotations

import mmap
from typing import Any, ClassVar, Generic, TypeVar

T = TypeVar("T", int, float)


class _Cells(Generic[T]):
    """``count`` cells of the C type :attr:`_code`, zero to start."""

    __slots__ = ("_cells", "_map")
    _code: ClassVar[str]

    def __init__(self, count: int) -> None:
        self._map = mmap.mmap(-1, max(1, count) * 8)
        # Any: typeshed types cast() per literal format, and the format is the subclass's
        self._cells: Any = memoryview(self._map).cast(self._code)  # type: ignore[call-overload]

    def __len__(self) -> int:
        return len(self._cells)

    def __getitem__(self, index: int) -> T:
        value: T = self._cells[index]
        return value

    def __setitem__(self, index: int, value: T) -> None:
        self._cells[index] = value


class SharedInts(_Cells[int]):
    """``count`` signed 64-bit integers, zero to start."""

    __slots__ = ()
    _code = "q"


class SharedFloats(_Cells[float]):
    """``count`` doubles, zero to start."""

    __slots__ = ()
    _code = "d"


class SharedBytes:
    """``size`` bytes, zero to start."""

    __slots__ = ("_map",)

    def __init__(self, size: int) -> None:
        self._map = mmap.mmap(-1, max(1, size))

    def __len__(self) -> int:
        return len(self._map)

    def write(self, offset: int, data: bytes) -> None:
        self._map[offset : offset + len(data)] = data

    def read(self, offset: int, size: int) -> bytes:
        return self._map[offset : offset + size]
