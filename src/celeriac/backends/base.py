"""The result backend interface: shared logic here, a few storage primitives per backend.

Every backend keeps Celery's rule that a SUCCESS is final: a late duplicate execution can never
turn a stored success into a failure.
"""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, NamedTuple

from celeriac.exceptions import BackendError, TimeoutError
from celeriac.protocol.results import make_meta, pending_meta
from celeriac.protocol.serializers import SerializerRegistry, default_registry
from celeriac.states import READY_STATES
from celeriac.transports.options import BACKEND, parse_options

if TYPE_CHECKING:
    from celeriac.transports.base import Transport


class EncodedResult(NamedTuple):
    """A result document ready to store, and where its client listens for it."""

    task_id: str
    state: str
    meta: bytes
    #: ``rpc://``: the reply queue of the client that sent the task ('' when none asked)
    reply_to: str = ""
    #: ``rpc://``: what the reply is tagged with (Celery's: the task id)
    correlation_id: str = ""


#: A chord whose claim is older than this (its claimer died before sending the body) may be
#: claimed again by a redelivered header task.
CHORD_CLAIM_STALE = 10.0


@dataclass(frozen=True, slots=True)
class ChordPart:
    """One finished header task of a chord."""

    group_id: str
    index: int
    task_id: str
    state: str
    meta: bytes
    #: header size from the body's ``chord_size``, for chords started by a client that did not
    #: create the counter
    size: int | None = None


@dataclass(frozen=True, slots=True)
class BackendOptions:
    """``result_backend_transport_options`` of a backend that takes none (any key is an error);
    a backend that takes some names its own class (``transports/<name>/options.py``)."""


class ResultBackend(ABC):
    """Stores task states and results."""

    #: The transport whose connections this backend uses (set when it hands it out).
    transport: Transport | None = None
    #: ``result_backend_transport_options`` are parsed into this; an unknown key is an error.
    options_class: ClassVar[type[object]] = BackendOptions

    def __init__(
        self,
        url: str,
        *,
        serializer: str = "json",
        accept: Sequence[str] = ("json",),
        expires: float | None = 86400.0,
        registry: SerializerRegistry = default_registry,
        transport_options: dict[str, Any] | None = None,
    ) -> None:
        self.url = url
        self.options = parse_options(
            self.options_class, transport_options, url=url, setting=BACKEND
        )
        self.serializer = serializer
        self.registry = registry
        self.accept = registry.content_types(accept)
        self.content_type = registry.get(serializer).content_type
        self.expires = expires

    # -- primitives a backend supplies --------------------------------------------------------
    @abstractmethod
    def _store(self, items: Sequence[EncodedResult]) -> None:
        """Write results in one go; never replace a stored SUCCESS."""

    @abstractmethod
    def _load(self, task_id: str) -> bytes | None:
        """The encoded document, or None when there is none (or it expired)."""

    @abstractmethod
    def _delete(self, task_id: str) -> None: ...

    def _change_token(self) -> Any:
        """Read before a result is loaded; :meth:`_wait_for_change` returns once it moves."""
        return None

    def _wait_for_change(self, task_id: str, token: Any, timeout: float) -> None:
        """Block until the result may have changed, at most ``timeout`` s (default: sleep)."""
        time.sleep(min(timeout, 0.05))

    def reply_to(self) -> str | None:
        """The queue results of tasks sent from this process must be sent to, for a backend
        that delivers them rather than stores them (``rpc://``); None for the rest."""
        return None

    def close(self) -> None:
        """Release what this backend holds in this process; the last part of a transport to
        close closes its connections."""
        transport, self.transport = self.transport, None
        if transport is not None:
            transport.give_back(self)

    # -- shared logic --------------------------------------------------------------------------
    def encode_meta(self, meta: dict[str, Any]) -> bytes:
        return self.registry.get(self.serializer).dumps(meta)

    def decode_meta(self, data: bytes) -> dict[str, Any]:
        meta = self.registry.loads(data, self.content_type, self.accept | {self.content_type})
        if not isinstance(meta, dict):
            raise BackendError("stored result is not a document")
        return meta

    def store_result(
        self,
        task_id: str,
        result: Any,
        state: str,
        *,
        traceback: str | None = None,
        **fields: Any,
    ) -> None:
        meta = make_meta(task_id, state, result, traceback=traceback, **fields)
        self._store([EncodedResult(task_id, state, self.encode_meta(meta))])

    def store_encoded(self, items: Sequence[EncodedResult]) -> None:
        """Store results the worker already encoded, in one batch."""
        if items:
            self._store(items)

    def get_meta(self, task_id: str) -> dict[str, Any]:
        data = self._load(task_id)
        return pending_meta(task_id) if data is None else self.decode_meta(data)

    def wait_for(self, task_id: str, timeout: float | None = None) -> dict[str, Any]:
        """The document once the task is ready; :class:`TimeoutError` after ``timeout`` s."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            token = self._change_token()
            meta = self.get_meta(task_id)
            if meta.get("status") in READY_STATES:
                return meta
            remaining = 1.0 if deadline is None else deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError(
                    f"task {task_id} not ready after {timeout}s (state {meta.get('status')})"
                )
            self._wait_for_change(task_id, token, min(remaining, 1.0))

    def forget(self, task_id: str) -> None:
        self._delete(task_id)

    # -- chords and groups (backends that support them override these) ----------------------
    def chord_start(self, group_id: str, size: int) -> None:
        """Create the counter of a chord whose header has ``size`` tasks."""
        raise BackendError(f"the {type(self).__name__} cannot run chords")

    def chord_record(self, parts: Sequence[ChordPart]) -> list[str]:
        """Record finished header tasks, each counted once however often it is delivered.

        Returns the chords this call completed *and claimed*: exactly one caller gets each
        chord, and must send its body, then call :meth:`chord_done`.
        """
        raise BackendError(f"the {type(self).__name__} cannot run chords")

    def chord_results(self, group_id: str) -> list[EncodedResult]:
        """The header results of a claimed chord, in header order."""
        raise BackendError(f"the {type(self).__name__} cannot run chords")

    def chord_done(self, group_id: str) -> None:
        """The body was sent: drop the counter's data, remember the chord as done."""
        raise BackendError(f"the {type(self).__name__} cannot run chords")

    def save_group(self, group_id: str, result_tuple: Any) -> None:
        raise BackendError(f"the {type(self).__name__} cannot save groups")

    def restore_group(self, group_id: str) -> Any:
        raise BackendError(f"the {type(self).__name__} cannot save groups")

    def forget_group(self, group_id: str) -> None:  # noqa: B027 - nothing saved, nothing to do
        pass

    def get_states(self, task_ids: Sequence[str]) -> dict[str, str]:
        """The stored state of each id that has one, in one round trip where possible."""
        out: dict[str, str] = {}
        for task_id in task_ids:
            data = self._load(task_id)
            if data is not None:
                out[task_id] = str(self.decode_meta(data).get("status"))
        return out


class DisabledBackend(ResultBackend):
    """Stands in when no result backend is configured: storing is a no-op, reading an error."""

    def __init__(self) -> None:
        super().__init__("disabled://")

    def _store(self, items: Sequence[EncodedResult]) -> None:
        pass

    def get_states(self, task_ids: Sequence[str]) -> dict[str, str]:
        return {}

    def _load(self, task_id: str) -> bytes | None:
        raise BackendError(
            "no result backend is configured; set result_backend (e.g. 'sqlite:///results.db')"
        )

    def _delete(self, task_id: str) -> None:
        pass
