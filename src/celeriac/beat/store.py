"""Beat's shared state, kept in the broker's own store, and the interface every store implements.

What the beats of one app share:

* a **leader lease**: one holder id and an expiry; only the holder sends;
* the **last tick** recorded per entry: ticks up to it are done (sent or skipped);
* **dynamic entries** (added at runtime) and the set of **paused** entry names;
* a **version** that changes with every entry change, so beats notice them cheaply.

Exactly one message per tick rests on :meth:`BeatStore.claim_tick`: a compare-and-set of the
entry's last tick, done atomically with the lease check. Two beats can never both claim a tick
(the compare-and-set), and a beat whose lease has run out claims nothing (the fence). The lease
itself only keeps the beats from racing each other for every tick.

A store is one class over a few primitives; a transport hands it out (a new one, PostgreSQL say,
is one more module of that transport), and it must pass ``tests/beat/test_store_contract.py``
unchanged.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from celeriac.transports.base import Transport


@dataclass(frozen=True, slots=True)
class Lease:
    """Who leads, and until when (unix seconds, by the store's clock)."""

    holder: str
    expires_at: float


@dataclass(frozen=True, slots=True)
class EntryState:
    """What the store knows about one entry name."""

    last_tick: float | None
    paused: bool


class BeatStore(ABC):
    """The primitives beat needs from a store. Every method is atomic on its own."""

    # -- leader lease -----------------------------------------------------------------------
    @abstractmethod
    def acquire(self, holder: str, ttl: float) -> bool:
        """Take the lease for ``ttl`` s if it is free or expired (or extend it if ``holder``
        has it). True when ``holder`` holds it afterwards."""

    @abstractmethod
    def renew(self, holder: str, ttl: float) -> bool:
        """Extend the lease by ``ttl`` s from now, only if ``holder`` still holds it."""

    @abstractmethod
    def release(self, holder: str) -> None:
        """Give the lease up now if ``holder`` holds it, so another beat takes over at once."""

    @abstractmethod
    def leader(self) -> Lease | None:
        """The current, unexpired lease, if any."""

    # -- ticks ------------------------------------------------------------------------------
    @abstractmethod
    def claim_tick(self, holder: str, entry: str, tick: float, previous: float | None) -> bool:
        """Record ``tick`` as ``entry``'s last tick, atomically with two checks: ``holder`` holds
        an unexpired lease, and the recorded last tick is still ``previous`` (None: none yet).
        False when either fails; nothing is recorded then."""

    @abstractmethod
    def unclaim_tick(self, entry: str, tick: float, previous: float | None) -> bool:
        """Put ``previous`` back if ``tick`` is still recorded (sending the tick failed)."""

    @abstractmethod
    def states(self) -> dict[str, EntryState]:
        """Last tick and paused flag of every entry name the store knows."""

    # -- dynamic entries --------------------------------------------------------------------
    @abstractmethod
    def put_entry(self, name: str, spec: dict[str, Any], *, replace: bool) -> bool:
        """Store a dynamic entry's JSON spec. With ``replace=False`` an existing name is left
        alone and False is returned. Bumps the version."""

    @abstractmethod
    def remove_entry(self, name: str) -> bool:
        """Forget a dynamic entry, its last tick and its paused flag. Bumps the version."""

    @abstractmethod
    def set_paused(self, name: str, paused: bool) -> None:
        """Pause or resume any entry, static or dynamic. Bumps the version."""

    @abstractmethod
    def entries(self) -> dict[str, dict[str, Any]]:
        """Every dynamic entry's spec, by name."""

    @abstractmethod
    def version(self) -> int:
        """A number that changes whenever entries are put, removed, paused or resumed."""

    #: The transport whose connections this store uses (set when it hands it out).
    transport: Transport | None = None

    def close(self) -> None:
        """Release what this store holds; the last part of a transport to close closes its
        connections."""
        transport, self.transport = self.transport, None
        if transport is not None:
            transport.give_back(self)


__all__ = ["BeatStore", "EntryState", "Lease"]
