"""The events interface: publish batches of event documents, subscribe to them by routing key.

An *event* is a flat JSON object with Celery's fields (``type``, ``hostname``, ``timestamp``,
``clock``, ...). Where it travels is the transport's business; what every implementation must do
(and ``tests/events/test_channel_contract.py`` checks over all of them):

* :meth:`EventChannel.publish` sends a batch of events at once. A batch of one event goes under
  its own routing key (its type with ``-`` turned into ``.``, e.g. ``worker.heartbeat``) with the
  event as the body; a longer batch, or any batch published ``grouped`` (a buffer's flush),
  whose events share one group (``task``), goes as one message under ``<group>.multi`` with the
  list as the body, which is how Celery's workers send buffered task events. Delivery is best
  effort, as in Celery: an event nobody listens to is lost.
* :meth:`EventChannel.subscribe` returns a :class:`Subscription` to AMQP-style topic patterns
  (``#`` any number of words, ``*`` one word, on the routing key); it sees the events published
  after it was made, in order per publisher, each batch unpacked into single events.
* :meth:`Subscription.receive` waits at most ``timeout`` seconds for the first event and returns
  whatever has arrived (an empty list when nothing did).

The layouts (PROTOCOL.md §2.8, §3.5) follow Celery's exactly, so Celery's tools and ours read
each other's events: Redis PUB/SUB channels ``/<db>.celeryev/<routing key>``, RabbitMQ's topic
exchange ``celeryev``, and on SQLite a table of events trimmed by age.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from functools import lru_cache
from typing import TYPE_CHECKING, Any

from celeriac.exceptions import ConfigurationError

if TYPE_CHECKING:
    from celeriac.transports.base import Transport

#: One event: Celery's fields, JSON-serialisable.
Event = dict[str, Any]

#: Celery's exchange for events (``event_exchange``).
EXCHANGE = "celeryev"


def group_of(event_type: str) -> str:
    """``task`` for ``task-succeeded``: the first word of an event's type."""
    return event_type.partition("-")[0]


def routing_key(event_type: str) -> str:
    """The routing key an event of ``event_type`` is published under (``worker.heartbeat``)."""
    return event_type.replace("-", ".")


def wire_form(events: Sequence[Event], grouped: bool = False) -> tuple[str, Event | list[Event]]:
    """The routing key and body a batch travels as (see the module docstring)."""
    if not events:
        raise ValueError("an empty batch of events")
    first = str(events[0].get("type", ""))
    if len(events) == 1 and not grouped:
        return routing_key(first), events[0]
    group = group_of(first)
    if any(group_of(str(e.get("type", ""))) != group for e in events):
        raise ValueError(f"a batch of events mixes groups: {[e.get('type') for e in events]}")
    return f"{group}.multi", list(events)


def unpack(body: Any) -> list[Event]:
    """The events a message body holds: one object, or a list of them (``task.multi``)."""
    if isinstance(body, dict):
        return [body]
    if isinstance(body, list):
        return [e for e in body if isinstance(e, dict)]
    return []


def topic_matches(pattern: str, key: str) -> bool:
    """AMQP topic matching on dot-separated words: ``#`` is zero or more words, ``*`` one."""
    if pattern == "#":
        return True
    return _match(tuple(pattern.split(".")), tuple(key.split(".")))


@lru_cache(maxsize=1024)
def _match(pattern: tuple[str, ...], words: tuple[str, ...]) -> bool:
    if not pattern:
        return not words
    head, rest = pattern[0], pattern[1:]
    if head == "#":
        return any(_match(rest, words[i:]) for i in range(len(words) + 1))
    if not words:
        return False
    return (head == "*" or head == words[0]) and _match(rest, words[1:])


def check_patterns(patterns: Sequence[str]) -> list[str]:
    if isinstance(patterns, str):
        patterns = [patterns]
    out = [p for p in patterns if p]
    if not out:
        raise ConfigurationError("subscribe to at least one routing-key pattern, e.g. '#'")
    return out


class Subscription(ABC):
    """A listener's view of the events published after it subscribed."""

    def __init__(self, patterns: Sequence[str]) -> None:
        self.patterns = check_patterns(patterns)

    def wanted(self, key: str) -> bool:
        return any(topic_matches(p, key) for p in self.patterns)

    @abstractmethod
    def receive(self, timeout: float) -> list[Event]:
        """Events that arrived, waiting up to ``timeout`` s for the first (``[]``: none)."""

    @abstractmethod
    def close(self) -> None: ...

    def __enter__(self) -> Subscription:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class EventChannel(ABC):
    """Publishes and subscribes to events on one server (module docstring). A part handed out
    by a :class:`~celeriac.transports.base.Transport` (``transport.events()``)."""

    transport: Transport | None = None

    def __init__(self) -> None:
        self._closed = False

    @abstractmethod
    def publish(self, events: Sequence[Event], *, grouped: bool = False) -> None:
        """Send a batch (module docstring); raises the transport's error when it cannot."""

    @abstractmethod
    def subscribe(self, patterns: Sequence[str] = ("#",)) -> Subscription: ...

    def _close(self) -> None:  # noqa: B027 - channels that hold nothing of their own
        """Release what this channel holds (subscriptions close on their own)."""

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._close()
        if self.transport is not None:
            self.transport.give_back(self)
