"""The result backend interface: shared logic here, a few storage primitives per backend.

Every backend keeps Celery's rule that a SUCCESS is final: a late duplicate execution can never
turn a stored success into a failure.

Waiting (:meth:`ResultBackend.wait_for`, behind ``AsyncResult.get(timeout=T)``) returns or raises
within T + :data:`WAIT_GRACE` s whatever the backend does: a backend whose reads honour
:func:`wait_deadline` runs the wait in the caller's thread; any other's runs on a helper thread
that the caller stops waiting for at the deadline.
"""

from __future__ import annotations

import queue
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from contextvars import ContextVar
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, Generic, NamedTuple, TypeVar

from celeriac._fork import generation
from celeriac.exceptions import BackendError, TimeoutError
from celeriac.protocol.results import make_meta, pending_meta
from celeriac.protocol.serializers import SerializerRegistry, default_registry
from celeriac.protocol.signing import Keyring, sign_encoded, verify_document
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

#: s a chord body claimed again is held back: its first copy, if its sender died after sending
#: it, runs meanwhile, and the second is then acknowledged as already succeeded.
CHORD_RESEND_DELAY = 10.0

#: s past a wait's timeout that its last look at the result may take: ``get(timeout=T)``
#: returns or raises within T + this.
WAIT_GRACE = 0.25

_WAIT_UNTIL: ContextVar[float | None] = ContextVar("celeriac_wait_until", default=None)


def wait_deadline() -> float | None:
    """When the primitives called by the :meth:`ResultBackend.wait_for` running in this context
    must have returned (``time.monotonic()``; its timeout plus :data:`WAIT_GRACE`), None outside
    a wait with a timeout. A backend whose reads can block (a network store) cuts them to it."""
    return _WAIT_UNTIL.get()


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
    #: True when :meth:`_load`, :meth:`_change_token` and :meth:`_wait_for_change` return by
    #: :func:`wait_deadline` on their own; otherwise a wait with a timeout runs on a helper
    #: thread the caller stops waiting for at the deadline (an SQLite read waits up to its
    #: 30 s busy timeout while another process holds the file locked).
    bounded_reads: ClassVar[bool] = False
    #: Whether :meth:`store_then_read_states` is one round trip (see
    #: :class:`~celeriac.transports.base.LookupCarriesResults`).
    stores_and_reads_together: ClassVar[bool] = False
    #: ``result_signing``: documents written through :meth:`encode_meta` are signed, and
    #: :meth:`get_meta` (what ``AsyncResult`` reads) raises :class:`SignatureError` for one
    #: that is unsigned or changed. None: signing is off.
    keyring: Keyring | None = None
    #: Largest encoded result document this store accepts (bytes), None for no limit of its own
    #: (memcached's is 1 MB by default); results over it are stored as a FAILURE instead.
    max_item_size: int | None = None

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

    def _expect(self, task_id: str) -> None:
        """A wait for ``task_id`` begins: a backend that notifies may start listening now, so
        that its subscription travels alongside the first read instead of after it."""
        return None

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
        serializer = self.registry.get(self.serializer)
        data = serializer.dumps(meta)
        return data if self.keyring is None else sign_encoded(data, serializer, self.keyring)

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
        if data is None:
            return pending_meta(task_id)
        meta = self.decode_meta(data)
        if self.keyring is not None:
            meta = verify_document(meta, self.keyring, f"the stored result of task {task_id}")
        return meta

    def wait_for(self, task_id: str, timeout: float | None = None) -> dict[str, Any]:
        """The document once the task is ready.

        With a ``timeout``, returns or raises within ``timeout`` + :data:`WAIT_GRACE` s:
        :class:`TimeoutError` when the backend answered that the task is not ready yet,
        :class:`BackendError` when it could not be read by then (unreachable, or blocked).
        """
        if timeout is None:
            return self._wait(task_id, None)
        deadline = time.monotonic() + max(0.0, timeout)
        until = deadline + WAIT_GRACE
        outer = _WAIT_UNTIL.get()
        if outer is not None:
            until = min(until, outer)
        if self.bounded_reads:
            return self._wait(task_id, deadline, until, timeout)
        job = _Job(lambda: self._wait(task_id, deadline, until, timeout))
        _waiters().submit(job)
        if not job.wait(until - time.monotonic()):
            raise BackendError(
                f"waiting for task {task_id}: the result backend did not answer within the"
                f" {timeout}s timeout (+{WAIT_GRACE}s)"
            )
        return job.outcome()

    def _wait(
        self,
        task_id: str,
        deadline: float | None,
        until: float | None = None,
        timeout: float | None = None,
    ) -> dict[str, Any]:
        token = None if until is None else _WAIT_UNTIL.set(until)
        try:
            self._expect(task_id)
            while True:
                change = self._change_token()
                meta = self.get_meta(task_id)
                if meta.get("status") in READY_STATES:
                    return meta
                remaining = 1.0 if deadline is None else deadline - time.monotonic()
                if remaining <= 0:
                    raise TimeoutError(
                        f"task {task_id} not ready after {timeout}s (state {meta.get('status')})"
                    )
                self._wait_for_change(task_id, change, min(remaining, 1.0))
        finally:
            if token is not None:
                _WAIT_UNTIL.reset(token)

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

    def store_then_read_states(
        self, items: Sequence[EncodedResult], task_ids: Sequence[str]
    ) -> dict[str, str]:
        """:meth:`store_encoded` ``items``, then :meth:`get_states` of ``task_ids``."""
        self.store_encoded(items)
        return self.get_states(task_ids) if task_ids else {}

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

    bounded_reads = True

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


T = TypeVar("T")


class _Job(Generic[T]):
    """A wait run on a helper thread, and what came of it."""

    __slots__ = ("_done", "error", "run", "value")

    def __init__(self, run: Callable[[], T]) -> None:
        self.run = run
        self.value: T | None = None
        self.error: BaseException | None = None
        # A lock, not an Event: handing a wait to a helper and back cost 2 x 40 us with
        # Events and 2 x 9 us with locks on a busy 2-core machine.
        self._done = threading.Lock()
        self._done.acquire()

    def run_now(self) -> None:
        try:
            self.value = self.run()
        except BaseException as exc:  # handed to the caller, who raises it
            self.error = exc

    def finish(self) -> None:
        self._done.release()

    def wait(self, timeout: float) -> bool:
        return self._done.acquire(timeout=max(0.0, timeout))

    def outcome(self) -> T:
        if self.error is not None:
            raise self.error
        return self.value  # type: ignore[return-value]


class _Waiters:
    """Helper threads for waits on backends whose reads may block past a deadline.

    Reused rather than one per wait: backends keep a connection per thread (SQLite), which a
    new thread would open every time. A thread left blocked in a read its caller gave up on
    finishes it in the background; daemon threads never hold up the interpreter's exit.
    """

    MAX_IDLE = 8
    IDLE_EXIT = 60.0  # s an idle thread waits for work before it exits

    def __init__(self) -> None:
        self.generation = generation()
        self._lock = threading.Lock()
        self._idle: list[_Waiter] = []

    def submit(self, job: _Job[Any]) -> None:
        with self._lock:
            waiter = self._idle.pop() if self._idle else None
        if waiter is None:
            _Waiter(self, job)
        else:
            waiter.inbox.put(job)

    def park(self, waiter: _Waiter) -> bool:
        """Make ``waiter`` available; False: enough are, it is to exit."""
        with self._lock:
            if len(self._idle) >= self.MAX_IDLE:
                return False
            self._idle.append(waiter)
            return True

    def retire(self, waiter: _Waiter) -> bool:
        """Take an idle ``waiter`` out; False: a job was just handed to it."""
        with self._lock:
            if waiter in self._idle:
                self._idle.remove(waiter)
                return True
            return False


class _Waiter:
    def __init__(self, pool: _Waiters, job: _Job[Any]) -> None:
        self.pool = pool
        self.inbox: queue.SimpleQueue[_Job[Any]] = queue.SimpleQueue()
        self.inbox.put(job)
        threading.Thread(target=self._serve, daemon=True, name="celeriac-result-wait").start()

    def _serve(self) -> None:
        while True:
            try:
                job = self.inbox.get(timeout=self.pool.IDLE_EXIT)
            except queue.Empty:
                if self.pool.retire(self):
                    return
                continue
            job.run_now()
            parked = self.pool.park(self)  # before the caller wakes: its next wait finds us
            job.finish()
            if not parked:
                return


_pool: _Waiters | None = None


def _waiters() -> _Waiters:
    """This process's helper threads (a forked child starts without its parent's)."""
    global _pool
    if _pool is None or _pool.generation != generation():
        _pool = _Waiters()
    return _pool
