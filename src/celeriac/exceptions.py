"""Every error Celeriac raises on purpose.

::

    CeleriacError
    ├── ConfigurationError          a bad setting, URL or app path
    ├── ProtocolError               a message that cannot be understood
    │   ├── DecodeError             the body does not decode with its content type
    │   ├── ContentDisallowed       the content type is not in ``accept_content``
    │   ├── EncodeError             an argument the task serializer cannot encode
    │   ├── MessageTooLarge         the encoded message exceeds ``broker_max_message_size``
    │   └── SignatureError          a message or result is unsigned, or its signature is wrong
    ├── BrokerError                 the broker failed or is unreachable
    │   └── PublishRefused          the broker refused a message for good (no route to a queue)
    ├── BackendError                the result backend failed, or none is configured
    ├── ResultTooLarge              a task's result exceeds ``result_max_size`` or its store's limit
    ├── NotRegistered               no task by that name
    ├── InvalidTaskArguments        the arguments do not fit the task's signature
    ├── TimeoutError                ``AsyncResult.get()`` waited too long (a builtin one too)
    ├── TaskRevokedError            the task was revoked or expired
    ├── WorkerLostError             the process running the task died
    ├── ChordError                  a chord header task failed, so the body cannot run
    ├── TimeLimitExceeded           the hard time limit killed the task
    ├── MemoryLimitExceeded         the task's process outgrew ``worker_max_memory_per_child``
    ├── RemoteTaskError             a task's exception whose type is not importable here
    └── Unsupported                 a remote-control command this worker cannot honour

Control flow inside tasks (not errors): :class:`Retry`, :class:`Reject`, :class:`Ignore`.
"""

from __future__ import annotations

import builtins
from typing import Any


class CeleriacError(Exception):
    """Root of every error Celeriac raises on purpose."""


class ConfigurationError(CeleriacError):
    """A setting, URL or app path is invalid."""


class ProtocolError(CeleriacError):
    """A message cannot be understood."""


class DecodeError(ProtocolError):
    """A body does not decode with its declared content type."""


class ContentDisallowed(ProtocolError):
    """A message's content type is not listed in ``accept_content``."""


class EncodeError(ProtocolError, TypeError):
    """A task's argument cannot be encoded with the task serializer (a ``TypeError`` too, as
    the serializer's own error was)."""


class MessageTooLarge(ProtocolError):
    """An encoded message exceeds ``broker_max_message_size``."""


class SignatureError(ProtocolError):
    """A message, remote-control command or stored result that must be signed (a signing key
    is set) carries no signature, one made with a key not accepted here, or one that does not
    match its content (it was changed after signing)."""


class BrokerError(CeleriacError):
    """The broker failed or could not be reached."""


class PublishRefused(BrokerError):
    """The broker refused a message for good: no queue is bound to its route, or its exchange
    does not exist. Sending it again unchanged cannot help."""


class BackendError(CeleriacError):
    """The result backend failed, or no result backend is configured."""


class ResultTooLarge(CeleriacError):
    """A task's encoded result exceeds ``result_max_size`` or the backend's own item limit; the
    task's state is stored as a FAILURE with this error instead."""


class NotRegistered(CeleriacError, KeyError):
    """No task is registered under this name."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else "task not registered"


class InvalidTaskArguments(CeleriacError, TypeError):
    """The arguments of a message do not fit the task's signature."""


class TimeoutError(CeleriacError, builtins.TimeoutError):
    """Waiting for a result took longer than the timeout."""


class TaskRevokedError(CeleriacError):
    """The task was revoked, or expired before it started."""


class WorkerLostError(CeleriacError):
    """The process executing the task exited before the task finished."""


class TimeLimitExceeded(CeleriacError):
    """The task ran past its hard time limit and was killed."""


class SoftTimeLimitExceeded(CeleriacError):
    """Raised inside a task when its soft time limit passes; the task may catch it."""


class ChordError(CeleriacError):
    """A chord's body could not run because a header task failed."""


class MemoryLimitExceeded(CeleriacError):
    """The process running the task grew past ``worker_max_memory_per_child`` while it ran."""


class RemoteTaskError(CeleriacError):
    """An exception raised by a task whose type cannot be imported here.

    Subclasses are created on the fly with the remote type's name, so ``repr()`` reads like the
    original; ``exc_module`` and ``exc_type`` say where it came from.
    """

    exc_module: str = ""
    exc_type: str = ""


class Retry(Exception):
    """Raised by ``Task.retry()``: the task will run again later."""

    def __init__(
        self,
        message: str | None = None,
        exc: BaseException | None = None,
        when: float | None = None,
        *,
        eta: float | None = None,
        new_args: tuple[Any, ...] | None = None,
        new_kwargs: dict[str, Any] | None = None,
        options: dict[str, Any] | None = None,
    ) -> None:
        self.exc = exc
        self.when = when
        self.eta = eta
        self.new_args = new_args
        self.new_kwargs = new_kwargs
        self.options = options or {}
        super().__init__(message or (f"Retry in {when}s" if when is not None else "Retry"))


class Reject(Exception):
    """Raised by a task to reject its message (dead-letter it, or requeue when ``requeue``)."""

    def __init__(self, reason: Any = None, requeue: bool = False) -> None:
        self.reason = reason
        self.requeue = requeue
        super().__init__(reason)


class Ignore(Exception):
    """Raised by a task so that the worker stores no state for it."""


class Unsupported(CeleriacError):
    """A remote-control command this worker (its pool, its shape) cannot honour; the reply
    says so (``{"error": ..., "unsupported": true}``) instead of staying silent."""
