"""Beat state in this process only: for ``memory://`` brokers and for tests.

It keeps the same rules as the shared stores (lease expiry, fenced compare-and-set of ticks),
and takes an injectable clock so scheduler tests can move time by hand.
"""

from __future__ import annotations

import copy
import threading
import time
from collections.abc import Callable
from typing import Any

from celeriac.beat.store import BeatStore, EntryState, Lease
from celeriac.transports.memory.options import MemoryOptions
from celeriac.transports.options import BROKER, parse_options


class MemoryBeatStore(BeatStore):
    def __init__(
        self,
        url: str = "memory://",
        transport_options: dict[str, Any] | None = None,
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.options = parse_options(MemoryOptions, transport_options, url=url, setting=BROKER)
        self.clock = clock
        self._lock = threading.Lock()
        self._lease: Lease | None = None
        self._ticks: dict[str, float] = {}
        self._unsent: set[str] = set()
        self._sent: dict[str, float] = {}
        self._paused: set[str] = set()
        self._entries: dict[str, dict[str, Any]] = {}
        self._version = 0

    def _live_lease(self) -> Lease | None:
        lease = self._lease
        return lease if lease is not None and lease.expires_at > self.clock() else None

    def acquire(self, holder: str, ttl: float) -> bool:
        with self._lock:
            lease = self._live_lease()
            if lease is not None and lease.holder != holder:
                return False
            self._lease = Lease(holder, self.clock() + ttl)
            return True

    def renew(self, holder: str, ttl: float) -> bool:
        with self._lock:
            lease = self._live_lease()
            if lease is None or lease.holder != holder:
                return False
            self._lease = Lease(holder, self.clock() + ttl)
            return True

    def release(self, holder: str) -> None:
        with self._lock:
            if self._lease is not None and self._lease.holder == holder:
                self._lease = None

    def leader(self) -> Lease | None:
        with self._lock:
            return self._live_lease()

    def claim_tick(
        self, holder: str, entry: str, tick: float, previous: float | None, *, unsent: bool = False
    ) -> bool:
        with self._lock:
            lease = self._live_lease()
            if lease is None or lease.holder != holder:
                return False
            if self._ticks.get(entry) != previous or entry in self._unsent:
                return False
            self._ticks[entry] = tick
            if unsent:
                self._unsent.add(entry)
            return True

    def settle_tick(self, entry: str, tick: float, *, sent_at: float | None = None) -> None:
        with self._lock:
            if self._ticks.get(entry) == tick and entry in self._unsent:
                self._unsent.discard(entry)
                if sent_at is not None:
                    self._sent[entry] = sent_at

    def states(self) -> dict[str, EntryState]:
        with self._lock:
            names = set(self._ticks) | self._paused
            return {
                n: EntryState(
                    self._ticks.get(n), n in self._paused, n in self._unsent, self._sent.get(n)
                )
                for n in names
            }

    def put_entry(self, name: str, spec: dict[str, Any], *, replace: bool) -> bool:
        with self._lock:
            if name in self._entries and not replace:
                return False
            self._entries[name] = copy.deepcopy(spec)
            self._version += 1
            return True

    def remove_entry(self, name: str) -> bool:
        with self._lock:
            found = self._entries.pop(name, None) is not None
            self._ticks.pop(name, None)
            self._unsent.discard(name)
            self._sent.pop(name, None)
            self._paused.discard(name)
            self._version += 1
            return found

    def set_paused(self, name: str, paused: bool) -> None:
        with self._lock:
            if paused:
                self._paused.add(name)
            else:
                self._paused.discard(name)
            self._version += 1

    def entries(self) -> dict[str, dict[str, Any]]:
        with self._lock:
            return copy.deepcopy(self._entries)

    def version(self) -> int:
        with self._lock:
            return self._version
