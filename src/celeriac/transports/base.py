"""The transport interface: the connections to one server, and the parts that use them.

A :class:`Transport` is opened once per server (an SQLite file, a Redis database, a RabbitMQ
vhost) and hands out the broker, the result backend and the beat store of its technology. They
share its connections: when ``broker_url`` and ``result_backend`` name the same server, the app
opens one transport for both. Each part's ``close()`` gives it back; the transport closes its
connections when the last part it handed out is closed (or when it is closed itself).

When one transport gave both the broker and the backend, :meth:`Transport.combine` may offer a
faster way to finish a batch (store results, acknowledge, fetch the next) than the three calls
in turn: Redis does it in one script call, RabbitMQ sends ``rpc://`` replies and acks on the
channel the tasks came from. That is the only place where a broker and a backend meet.

Likewise :meth:`Transport.tick_sender` may let beat record a tick and store its message in one
atomic step when this transport gave both the broker and the beat store (one SQLite
transaction, one Redis script call).
"""

from __future__ import annotations

import contextlib
import threading
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, Protocol, TypeVar

from celeriac.exceptions import ConfigurationError
from celeriac.urls import redact

if TYPE_CHECKING:
    from celeriac.backends.base import EncodedResult, ResultBackend
    from celeriac.beat.store import BeatStore, TickSender
    from celeriac.brokers.base import Broker, Delivery
    from celeriac.control.mailbox import Mailbox
    from celeriac.events.channel import EventChannel


class Part(Protocol):
    """What a transport hands out: a broker, a result backend or a beat store."""

    transport: Transport | None

    def close(self) -> None: ...


P = TypeVar("P", bound=Part)


@dataclass(frozen=True, slots=True)
class BackendConfig:
    """What a result backend needs from the app's settings besides its URL."""

    serializer: str = "json"
    accept: Sequence[str] = ("json",)
    #: seconds results are kept (None: forever)
    expires: float | None = 86400.0
    transport_options: dict[str, Any] | None = None


@dataclass(frozen=True, slots=True)
class EventConfig:
    """What an event channel needs from the app's settings besides the broker's URL."""

    transport_options: dict[str, Any] | None = None
    #: s events are kept where the server stores them (SQLite's table; ``event_retention``)
    retention: float = 3600.0


class Transport(ABC):
    """The connections to one server and the broker, backend and beat store that use them."""

    #: URL schemes this transport serves (``transports.TRANSPORTS`` maps them here).
    schemes: ClassVar[tuple[str, ...]] = ()
    #: Whether processes other than this one can reach the server (not ``memory://``): a
    #: prefork worker's children then consume on their own.
    shared_between_processes: ClassVar[bool] = True
    #: Whether a broker here keeps results too when no ``result_backend`` is set (SQLite,
    #: memory: no second server to run).
    results_by_default: ClassVar[bool] = False

    def __init__(self, url: str) -> None:
        self.url = url
        self._parts: list[Part] = []
        self._lock = threading.Lock()
        self._closed = False

    # -- what a technology supplies ------------------------------------------------------
    @classmethod
    def server_key(cls, url: str) -> str:
        """Names the server ``url`` reaches: URLs with equal keys share one transport."""
        return url.partition("?")[0]

    @abstractmethod
    def _open_broker(self, transport_options: dict[str, Any]) -> Broker: ...

    def _open_backend(self, url: str, config: BackendConfig) -> ResultBackend:
        raise ConfigurationError(f"{_scheme(url)}:// cannot store results")

    def _open_beat_store(self, transport_options: dict[str, Any]) -> BeatStore:
        raise ConfigurationError(
            f"beat keeps its state in the broker, and {_scheme(self.url)}:// cannot hold it"
        )

    def _open_mailbox(self, transport_options: dict[str, Any]) -> Mailbox:
        raise ConfigurationError(f"{_scheme(self.url)}:// carries no remote control")

    def _open_events(self, config: EventConfig) -> EventChannel:
        raise ConfigurationError(f"{_scheme(self.url)}:// carries no events")

    def upgrade_schema(self) -> str | None:
        """Make or upgrade the tables this technology keeps on the server (``celeriac db
        upgrade``); a line saying what was done, or None where there is no schema."""
        return None

    def _close_connections(self) -> None:  # noqa: B027 - transports holding nothing
        """Close what the parts shared; called once, after the last part was given back."""

    # -- handing out -----------------------------------------------------------------------
    def broker(self, transport_options: dict[str, Any] | None = None) -> Broker:
        """A broker on this transport's connections (``broker_transport_options``)."""
        return self._hand_out(self._open_broker(dict(transport_options or {})))

    def backend(self, url: str, config: BackendConfig | None = None) -> ResultBackend:
        """A result backend for ``url`` (this server, perhaps in another spelling such as
        ``rpc://``) on this transport's connections."""
        return self._hand_out(self._open_backend(url, config or BackendConfig()))

    def beat_store(self, transport_options: dict[str, Any] | None = None) -> BeatStore:
        """Beat's shared state, kept on this server."""
        return self._hand_out(self._open_beat_store(dict(transport_options or {})))

    def mailbox(self, transport_options: dict[str, Any] | None = None) -> Mailbox:
        """Remote control (Celery's pidbox) on this server (``broker_transport_options``)."""
        return self._hand_out(self._open_mailbox(dict(transport_options or {})))

    def events(self, config: EventConfig | None = None) -> EventChannel:
        """A channel for Celery's events on this server (see :mod:`celeriac.events.channel`)."""
        return self._hand_out(self._open_events(config or EventConfig()))

    def _hand_out(self, part: P) -> P:
        with self._lock:
            if self._closed:
                part.close()
                raise ConfigurationError(f"the transport for {redact(self.url)} was closed")
            self._parts.append(part)
        part.transport = self
        return part

    def give_back(self, part: Part) -> None:
        """A part was closed; the last one closes the connections."""
        with self._lock:
            if part in self._parts:
                self._parts.remove(part)
            last = not self._parts and not self._closed
            if last:
                self._closed = True
        if last:
            self._close_connections()

    def close(self) -> None:
        """Close every part handed out, then the connections."""
        with self._lock:
            parts = list(self._parts)
        for part in parts:
            part.close()  # each gives itself back; the last closes the connections
        with self._lock:
            never_used = not self._closed
            self._closed = True
        if never_used:
            self._close_connections()

    @property
    def closed(self) -> bool:
        return self._closed

    # -- the combined path -----------------------------------------------------------------
    def combine(self, broker: Broker, backend: ResultBackend) -> Combined:
        """How a worker finishes batches when this transport gave both ``broker`` and
        ``backend``. The default: :func:`combine_apart`."""
        return combine_apart(broker, backend)

    def tick_sender(self, broker: Broker, store: BeatStore) -> TickSender:
        """How beat claims a tick and sends its message when this transport gave both
        ``broker`` and ``store``. The default takes three steps (see
        :class:`~celeriac.beat.store.TickSender`); a transport that can claim the tick and
        store the message in one atomic step returns a sender that does."""
        from celeriac.beat.store import TickSender

        return TickSender(broker, store)


class Combined:
    """A broker and the result backend that goes with it, as a worker's consumer uses them:
    results are stored before their messages are acknowledged, and where the server allows,
    both ride on the next fetch (see :meth:`Transport.combine`)."""

    #: Whether :meth:`store_ack_fetch` stores results in the same round trip as the fetch (a
    #: worker then hands results over only for batches that need nothing else first).
    carries_results: bool = False

    def __init__(self, broker: Broker, backend: ResultBackend) -> None:
        self.broker = broker
        self.backend = backend

    def fetch(self, queues: Sequence[str], limit: int, *, timeout: float) -> list[Delivery]:
        """:meth:`Broker.fetch`; deliveries may carry the task's stored state
        (:attr:`Delivery.stored_state`) when the server read it in the same step."""
        return self.broker.fetch(queues, limit, timeout=timeout)

    def store_ack_fetch(
        self,
        results: Sequence[EncodedResult],
        acks: Sequence[Delivery],
        queues: Sequence[str],
        limit: int,
        *,
        timeout: float,
    ) -> list[Delivery]:
        """Store ``results``, acknowledge ``acks``, then fetch up to ``limit`` messages.

        When it raises, the caller cannot tell whether the results and acks went through, and
        must store and ack them again (both are harmless twice).
        """
        if results:
            self.backend.store_encoded(results)
        return self.broker.ack_and_fetch(acks, queues, limit, timeout=timeout)


class LookupCarriesResults(Combined):
    """A broker and a result backend on separate servers (RabbitMQ and Redis, say), where the
    backend stores results and reads states in one round trip: a driven consumer's results
    wait for its next fetch, which takes what the broker already sent (:meth:`Broker.arrived`:
    RabbitMQ's prefetched messages, no round trip), stores the results and reads those tasks'
    stored states in one trip, and only then acks: one trip to the backend for a batch
    instead of two. With nothing arrived, the results are stored and the acks sent before the
    fetch waits for messages: no result waits on an idle queue. A broker that sends nothing
    ahead (every fetch a round trip) keeps three calls: store, ack and fetch, look up.
    """

    carries_results = True

    def store_ack_fetch(
        self,
        results: Sequence[EncodedResult],
        acks: Sequence[Delivery],
        queues: Sequence[str],
        limit: int,
        *,
        timeout: float,
    ) -> list[Delivery]:
        if not results:
            return self.broker.ack_and_fetch(acks, queues, limit, timeout=timeout)
        got = self._settle(results, acks, self.broker.arrived(queues, limit))
        if got or limit <= 0:
            return got
        return self.broker.fetch(queues, limit, timeout=timeout)

    def _settle(
        self, results: Sequence[EncodedResult], acks: Sequence[Delivery], got: list[Delivery]
    ) -> list[Delivery]:
        """Store ``results`` and read the states of ``got`` in one trip, then ack ``acks``."""
        broker = self.broker
        try:
            ids = [d.message.task_id for d in got if d.message.task_id]
            found = self.backend.store_then_read_states(results, ids)
            if acks:
                broker.ack(acks)
        except BaseException:
            # The caller stores and acks again; what was taken goes back, never worked on.
            for delivery in got:
                with contextlib.suppress(Exception):
                    broker.requeue(delivery, count=False)
            raise
        for delivery in got:
            if delivery.message.task_id:
                delivery.stored_state = found.get(delivery.message.task_id, "")
        return got


def combine_apart(broker: Broker, backend: ResultBackend) -> Combined:
    """How a worker finishes batches with a broker and a backend that no one call of a
    transport serves together: :class:`LookupCarriesResults` where the backend can store and
    read in one trip, else three calls (store, ack and fetch, look up)."""
    if backend.stores_and_reads_together:
        return LookupCarriesResults(broker, backend)
    return Combined(broker, backend)


def own(parts: Sequence[P], part: object) -> P | None:
    """``part`` as one of ``parts`` (what a transport handed out, by kind), by identity: how a
    transport recognises its own broker, backend or beat store without asking their types."""
    return next((p for p in parts if p is part), None)


def _scheme(url: str) -> str:
    return url.partition("://")[0].lower()
