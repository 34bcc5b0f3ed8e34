"""Beat's shared state, kept in the broker's own store, and the interface every store implements.

What the beats of one app share:

* a **leader lease**: one holder id and an expiry; only the holder sends;
* the **last tick** recorded per entry: ticks up to it are done (sent or skipped), except that
  the last one may be recorded as **unsent**: meant to be sent, its message not yet known to be
  with the broker;
* the **last send** per entry: when its message last went to the broker (a tick recorded
  without a message, the first-sight anchor or a skipped one, leaves it as it was);
* **dynamic entries** (added at runtime) and the set of **paused** entry names;
* a **version** that changes with every entry change, so beats notice them cheaply.

One message per tick rests on :meth:`BeatStore.claim_tick`: a compare-and-set of the entry's
last tick, done atomically with the lease check. Two beats can never both claim a tick (the
compare-and-set), and a beat whose lease has run out claims nothing (the fence). The lease
itself only keeps the beats from racing each other for every tick.

How a claimed tick's message reaches the broker is a :class:`TickSender`'s job. The one any store
and broker allow takes three steps: claim the tick as unsent, publish, settle it. A beat killed
in between leaves the tick unsent, and the next leader sends it again with the same task id: no
tick is lost, but one whose publish went through and was not settled is sent twice. A transport
whose broker and beat store share a server gives a sender that claims the tick and stores its
message in one atomic step (:meth:`~celeriac.transports.base.Transport.tick_sender`), and then
neither can happen.

A store is one class over a few primitives; a transport hands it out (a new one, PostgreSQL say,
is one more module of that transport), and it must pass ``tests/beat/test_store_contract.py``
unchanged.
"""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from collections.abc import Callable

    from celeriac.brokers.base import Broker
    from celeriac.protocol.publication import Publication
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
    #: ``last_tick`` was claimed to be sent and is not known to be: send it (again) or give it up.
    unsent: bool = False
    #: When the entry's message last went to the broker (unix seconds); None: never sent.
    last_sent: float | None = None


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
    def claim_tick(
        self, holder: str, entry: str, tick: float, previous: float | None, *, unsent: bool = False
    ) -> bool:
        """Record ``tick`` as ``entry``'s last tick, atomically with three checks: ``holder``
        holds an unexpired lease, the recorded last tick is still ``previous`` (None: none yet),
        and it is not unsent. False when one fails; nothing is recorded then.

        With ``unsent=True`` the tick is recorded as unsent until :meth:`settle_tick`."""

    @abstractmethod
    def settle_tick(self, entry: str, tick: float, *, sent_at: float | None = None) -> None:
        """``entry``'s unsent ``tick`` needs nothing more: its message is with the broker (then
        ``sent_at`` says since when, recorded as the entry's last send), or it was given up
        (None). No effect unless ``tick`` is the entry's last tick and unsent."""

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


class TickSender:
    """Claims a tick and sends its message, in the three steps any store and broker allow.

    A transport whose broker and beat store share one server may give a subclass that claims
    and stores the message in one atomic step (:meth:`Transport.tick_sender`); the scheduler
    gets one from :func:`tick_sender`.
    """

    def __init__(self, broker: Broker, store: BeatStore) -> None:
        self.broker = broker
        self.store = store
        #: what a send is timed by (the entry's last send); beat gives it its own clock
        self.clock: Callable[[], float] = time.time

    def claim_and_send(
        self, holder: str, entry: str, tick: float, previous: float | None, publication: Publication
    ) -> bool:
        """:meth:`BeatStore.claim_tick` ``tick`` and publish its message. False: the claim was
        refused and nothing was sent.

        When it raises, the store says what happened (:meth:`~BeatStore.states`): the tick
        is its last one or not, and here a claimed tick whose message may not have reached
        the broker is unsent. An atomic sender never leaves a tick unsent.
        """
        if not self.store.claim_tick(holder, entry, tick, previous, unsent=True):
            return False
        self.send(entry, tick, publication)
        return True

    def send(self, entry: str, tick: float, publication: Publication) -> None:
        """Publish an unsent tick's message, then settle the tick."""
        self.broker.publish(publication)
        self.store.settle_tick(entry, tick, sent_at=self.clock())


def tick_sender(broker: Broker, store: BeatStore) -> TickSender:
    """The transport's own sender when it gave both ``broker`` and ``store``, else the
    three-step one."""
    transport = broker.transport
    if transport is not None and store.transport is transport:
        return transport.tick_sender(broker, store)
    return TickSender(broker, store)


__all__ = ["BeatStore", "EntryState", "Lease", "TickSender", "tick_sender"]
