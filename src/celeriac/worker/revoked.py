"""Task ids revoked by broadcast (Celery's ``revoke`` command), remembered by a worker.

A Celery worker keeps them in memory only, and so does this: the newest :data:`LIMIT` ids for
:data:`EXPIRES` s (Celery's ``REVOKES_MAX`` and ``REVOKE_EXPIRES``). The fetcher looks here
before a task reaches the pool, the pool again just before it starts it.

A prefork worker whose children consume hears commands in its supervising process; it writes
each revoked id into a ring in shared memory (:class:`RevokedRing`), which every child reads
before it looks an id up, so a child skips a task revoked after it forked.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict

from celeriac.worker.shared import SharedBytes, SharedInts

LIMIT = 50_000
EXPIRES = 10_800.0
#: bytes per id in the ring (a UUID is 36)
_WIDTH = 128


class RevokedRing:
    """The last ``size`` revoked ids, in memory shared across a fork (one writer: the
    supervisor)."""

    def __init__(self, size: int = 4096) -> None:
        self.size = size
        self._count = SharedInts(1)
        self._data = SharedBytes(size * _WIDTH)

    def write(self, task_id: str) -> None:
        raw = task_id.encode()[:_WIDTH]
        self._data.write((self._count[0] % self.size) * _WIDTH, raw.ljust(_WIDTH, b"\0"))
        self._count[0] += 1

    def read_since(self, seen: int) -> tuple[int, list[str]]:
        """Ids written after the first ``seen``; the count to pass next time."""
        count = self._count[0]
        out = []
        for n in range(max(seen, count - self.size), count):
            out.append(self._data.read((n % self.size) * _WIDTH, _WIDTH).rstrip(b"\0").decode())
        return count, out


class Revoked:
    """The revoked ids this worker knows of (newest :data:`LIMIT`, for :data:`EXPIRES` s)."""

    def __init__(self, ring: RevokedRing | None = None) -> None:
        self._ids: OrderedDict[str, float] = OrderedDict()
        self._lock = threading.Lock()
        self.ring = ring
        self._seen = 0

    def add(self, task_ids: list[str]) -> None:
        now = time.time()
        with self._lock:
            for task_id in task_ids:
                self._ids.pop(task_id, None)
                self._ids[task_id] = now
                if self.ring is not None:
                    self.ring.write(task_id)
                    self._seen += 1
            while len(self._ids) > LIMIT:
                self._ids.popitem(last=False)

    def _sync(self) -> None:
        if self.ring is None:
            return
        count, new = self.ring.read_since(self._seen)
        if not new:
            return
        now = time.time()
        with self._lock:
            self._seen = count
            for task_id in new:
                self._ids[task_id] = now

    def __contains__(self, task_id: object) -> bool:
        self._sync()
        with self._lock:
            at = self._ids.get(task_id) if isinstance(task_id, str) else None
            return at is not None and at > time.time() - EXPIRES

    def ids(self) -> list[str]:
        """Oldest first, expired ones dropped."""
        self._sync()
        cutoff = time.time() - EXPIRES
        with self._lock:
            while self._ids and next(iter(self._ids.values())) <= cutoff:
                self._ids.popitem(last=False)
            return list(self._ids)
