"""The mailbox remote control travels through: Celery's "pidbox", on any transport.

Two sides share one interface. A worker *listens* as its node name (``name@host``), takes the
commands meant for it (:meth:`Mailbox.receive`, bounded by a timeout) and answers each that asks
for a reply (:meth:`Mailbox.reply`). A client *broadcasts* a command to every node or to a list
of them (:meth:`Mailbox.call`) and collects the replies that carry its ticket until the timeout
or ``limit`` replies.

What goes over the wire is Celery's (PROTOCOL.md §2.7, §3.4), so Celery's client and workers
take part: the command body ``{"method", "arguments", "destination", "pattern", "matcher",
"ticket", "reply_to": {"exchange": "reply.celery.pidbox", "routing_key": <client oid>}}`` with
headers ``clock`` and ``expires`` (unix time; an expired command is dropped unread), and a reply
body ``{<node>: <reply>}`` with headers ``ticket`` and ``clock``. A transport supplies four
primitives per side (publish a command, read commands, send a reply, read replies); the
filtering, expiry, tickets, waiting and signatures live here once.

With a signing key (``task_signing_key(s)``, handed over as :attr:`Mailbox.keyring`) commands
and replies carry an HMAC in two headers (:func:`~celeriac.protocol.signing.sign_control`): a
worker ignores a command that is unsigned or forged, and a client a reply, each with a log line
saying why.
"""

from __future__ import annotations

import itertools
import json
import logging
import threading
import time
import uuid
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from celeriac.exceptions import SignatureError
from celeriac.protocol.signing import Keyring, sign_control, verify_control

if TYPE_CHECKING:
    from celeriac.transports.base import Transport

logger = logging.getLogger("celeriac.control")

#: Celery's names (``control_exchange``): the broadcast exchange and the replies' exchange.
EXCHANGE = "celery.pidbox"
REPLY_EXCHANGE = "reply.celery.pidbox"

#: A message as the primitives pass it: the decoded JSON body and the headers.
Raw = tuple[dict[str, Any], dict[str, Any]]


#: s a command stays readable in a mailbox kept in tables (RabbitMQ's node queues drop commands
#: unread after 300 s, as Celery declares them).
COMMAND_TTL = 300.0
#: s such a mailbox keeps a reply for a client that stopped waiting.
REPLY_TTL = 60.0


def decode_row(body: str, headers: str) -> Raw | None:
    """A command or reply kept as two JSON columns (SQLite, PostgreSQL); None, logged, for a
    row that is not two JSON objects."""
    try:
        b, h = json.loads(body), json.loads(headers)
    except ValueError as exc:
        logger.warning("dropped an unreadable remote-control row: %s", exc)
        return None
    return (b, h) if isinstance(b, dict) and isinstance(h, dict) else None


_clock = itertools.count(1)
_clock_lock = threading.Lock()


def tick() -> int:
    """The next value of this process's logical clock (Celery sends one with every message)."""
    with _clock_lock:
        return next(_clock)


@dataclass(frozen=True, slots=True)
class Command:
    """One remote-control command, as a worker reads it."""

    method: str
    arguments: dict[str, Any]
    ticket: str
    #: the client's oid (the reply routing key); None: no reply wanted
    reply_to: str | None = None
    #: node names it is meant for; None: every node
    destination: tuple[str, ...] | None = None
    #: unix time after which it must not be acted on
    expires: float | None = None

    def body(self) -> dict[str, Any]:
        """Celery's command body, key for key (PROTOCOL.md §2.7)."""
        return {
            "method": self.method,
            "arguments": self.arguments,
            "destination": list(self.destination) if self.destination is not None else None,
            "pattern": None,
            "matcher": None,
            "ticket": self.ticket,
            "reply_to": (
                {"exchange": REPLY_EXCHANGE, "routing_key": self.reply_to}
                if self.reply_to
                else None
            ),
        }

    def headers(self) -> dict[str, Any]:
        # 0, not null, for "no expiry": what kombu sends.
        return {"clock": tick(), "expires": self.expires or 0}

    @classmethod
    def read(cls, body: dict[str, Any], headers: dict[str, Any]) -> Command:
        """A command from its body and headers; ``ValueError`` when it is not one."""
        method = body.get("method")
        if not isinstance(method, str):
            raise ValueError("no method")
        arguments = body.get("arguments") or {}
        if not isinstance(arguments, dict):
            raise ValueError("arguments are not an object")
        reply_to = body.get("reply_to")
        key = reply_to.get("routing_key") if isinstance(reply_to, dict) else None
        dest = body.get("destination")
        expires = headers.get("expires")
        return cls(
            method,
            arguments,
            str(body.get("ticket") or ""),
            str(key) if key else None,
            tuple(str(d) for d in dest) if dest else None,
            float(expires) if expires else None,
        )

    def meant_for(self, node: str) -> bool:
        return self.destination is None or node in self.destination


class Mailbox(ABC):
    """Celery's pidbox on one transport: a worker's side and a client's side."""

    transport: Transport | None = None
    #: signs what this mailbox sends and rejects what arrives unsigned (None: signing is off)
    keyring: Keyring | None = None

    def __init__(self) -> None:
        self.node: str | None = None
        # One command at a time per client: some transports' connections are not thread-safe.
        self._calling = threading.Lock()

    # -- what a transport supplies -------------------------------------------------------------
    @abstractmethod
    def _listen(self, node: str) -> None:
        """Start receiving broadcast commands as ``node``."""

    @abstractmethod
    def _receive(self, timeout: float) -> list[Raw]:
        """Commands that arrived, waiting up to ``timeout`` s for the first."""

    @abstractmethod
    def _reply(self, oid: str, body: dict[str, Any], headers: dict[str, Any]) -> None:
        """Send a reply to the client ``oid``."""

    @abstractmethod
    def _publish(self, body: dict[str, Any], headers: dict[str, Any]) -> None:
        """Broadcast a command to every listening node."""

    @abstractmethod
    def _open_replies(self, oid: str) -> None:
        """Start collecting replies for ``oid`` (before the command goes out)."""

    @abstractmethod
    def _replies(self, oid: str, timeout: float) -> list[Raw]:
        """Replies for ``oid`` that arrived, waiting up to ``timeout`` s for the first."""

    @abstractmethod
    def _close_replies(self, oid: str) -> None:
        """Stop collecting replies for ``oid`` and drop what is left."""

    def _close(self) -> None:  # noqa: B027 - transports holding nothing of their own
        """Release what this mailbox opened."""

    # -- the worker's side -----------------------------------------------------------------------
    def listen(self, node: str) -> None:
        """Receive commands as ``node`` from now on."""
        self.node = node
        self._listen(node)

    def receive(self, timeout: float) -> list[Command]:
        """The commands for this node, waiting up to ``timeout`` s; expired ones dropped."""
        assert self.node is not None, "listen() first"
        out = []
        for body, headers in self._receive(timeout):
            try:
                command = Command.read(body, headers)
            except (ValueError, TypeError) as exc:
                logger.warning("dropped an unreadable remote-control command: %s", exc)
                continue
            if not command.meant_for(self.node):
                continue
            if not self._signed(body, headers, f"remote-control command {command.method!r}"):
                continue
            if command.expires is not None and command.expires < time.time():
                logger.info("dropped remote-control command %r: expired", command.method)
                continue
            out.append(command)
        return out

    def reply(self, command: Command, reply: Any) -> None:
        """Answer ``command`` as this node (no-op when it asked for no reply)."""
        assert self.node is not None, "listen() first"
        if command.reply_to:
            headers = {"ticket": command.ticket, "clock": tick()}
            body = {self.node: reply}
            if self.keyring is not None:
                sign_control(body, headers, self.keyring)
            self._reply(command.reply_to, body, headers)

    # -- the client's side ---------------------------------------------------------------------
    def call(
        self,
        method: str,
        arguments: dict[str, Any] | None = None,
        *,
        destination: list[str] | None = None,
        reply: bool = True,
        timeout: float = 1.0,
        limit: int | None = None,
        expires: float | None = None,
        on_reply: Callable[[dict[str, Any]], None] | None = None,
    ) -> list[dict[str, Any]]:
        """Broadcast ``method`` and collect the replies (``{node: reply}`` each).

        Waits until ``timeout`` s passed or ``limit`` replies came (``limit`` defaults to the
        number of ``destination`` nodes when they are named). ``expires`` (s from now) bounds
        how long the command may wait unread; by default the timeout when replies are
        awaited and no bound otherwise, as Celery does.
        """
        with self._calling:
            return self._send_command(
                method, arguments, destination, reply, timeout, limit, expires, on_reply
            )

    def _send_command(
        self,
        method: str,
        arguments: dict[str, Any] | None,
        destination: list[str] | None,
        reply: bool,
        timeout: float,
        limit: int | None,
        expires: float | None,
        on_reply: Callable[[dict[str, Any]], None] | None,
    ) -> list[dict[str, Any]]:
        oid, ticket = str(uuid.uuid4()), str(uuid.uuid4())
        if limit is None and destination:
            limit = len(destination)
        command = Command(
            method,
            dict(arguments or {}),
            ticket,
            oid if reply else None,
            tuple(destination) if destination is not None else None,
            _expiry(expires, timeout if reply else None),
        )
        body, headers = command.body(), command.headers()
        if self.keyring is not None:
            sign_control(body, headers, self.keyring)
        if not reply:
            self._publish(body, headers)
            return []
        self._open_replies(oid)
        try:
            self._publish(body, headers)
            return self._collect(oid, ticket, timeout, limit, on_reply)
        finally:
            self._close_replies(oid)

    def _collect(
        self,
        oid: str,
        ticket: str,
        timeout: float,
        limit: int | None,
        on_reply: Callable[[dict[str, Any]], None] | None,
    ) -> list[dict[str, Any]]:
        replies: list[dict[str, Any]] = []
        deadline = time.monotonic() + timeout
        while limit is None or len(replies) < limit:
            left = deadline - time.monotonic()
            if left <= 0:
                break
            for body, headers in self._replies(oid, min(left, 1.0)):
                if headers.get("ticket") != ticket or not isinstance(body, dict):
                    continue  # a late reply to an earlier command of this client
                if not self._signed(body, headers, f"reply from {', '.join(map(str, body))}"):
                    continue
                replies.append(body)
                if on_reply is not None:
                    on_reply(body)
        return replies[:limit] if limit is not None else replies

    def _signed(self, body: dict[str, Any], headers: dict[str, Any], what: str) -> bool:
        """Whether a message may be acted on: signing is off, or its signature holds."""
        if self.keyring is None:
            return True
        try:
            verify_control(body, headers, self.keyring)
        except SignatureError as exc:
            logger.warning("ignored %s: %s", what, exc)
            return False
        return True

    def close(self) -> None:
        self._close()
        if self.transport is not None:
            self.transport.give_back(self)
            self.transport = None


def _expiry(expires: float | None, timeout: float | None) -> float | None:
    seconds = expires if expires is not None else timeout
    return time.time() + seconds if seconds else None
