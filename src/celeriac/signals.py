"""Signals with Celery's names: connect a receiver, and it is called when the event happens.

>>> from celeriac.signals import task_success
>>> @task_success.connect
... def log_it(sender, result, **kwargs):
...     print(sender.name, result)

Receivers are called in the order they connected, with ``sender`` plus keyword arguments. A
receiver that raises is logged and skipped: a monitoring hook must never fail a task or lose a
message. Acknowledgement and result storage do not go through signals, so receivers cannot break
delivery guarantees.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Any

logger = logging.getLogger("celeriac.signals")

Receiver = Callable[..., Any]


class Signal:
    """One event kind: ``connect``/``disconnect`` receivers, ``send`` to call them."""

    def __init__(self, name: str, doc: str = "") -> None:
        self.name = name
        self.__doc__ = doc
        self._receivers: list[tuple[Receiver, Any]] = []
        self._lock = threading.Lock()

    def connect(self, receiver: Receiver | None = None, *, sender: Any = None) -> Any:
        """Connect ``receiver``; also ``@signal.connect`` or ``@signal.connect(sender=x)``.

        With ``sender``, the receiver only hears sends from that sender (for task signals: the
        task object or its name).
        """

        def register(fn: Receiver) -> Receiver:
            with self._lock:
                if not any(r is fn and s == sender for r, s in self._receivers):
                    self._receivers = [*self._receivers, (fn, sender)]
            return fn

        return register(receiver) if receiver is not None else register

    def disconnect(self, receiver: Receiver, *, sender: Any = None) -> bool:
        with self._lock:
            kept = [(r, s) for r, s in self._receivers if not (r is receiver and s == sender)]
            removed = len(kept) != len(self._receivers)
            self._receivers = kept
        return removed

    @property
    def receivers(self) -> list[Receiver]:
        return [r for r, _ in self._receivers]

    def send(self, sender: Any = None, **kwargs: Any) -> list[tuple[Receiver, Any]]:
        """Call every matching receiver; returns ``(receiver, return value or exception)``."""
        if not self._receivers:  # the common case on hot paths: nothing connected
            return []
        out: list[tuple[Receiver, Any]] = []
        for receiver, wanted in self._receivers:
            if wanted is not None and not _matches(wanted, sender):
                continue
            try:
                out.append((receiver, receiver(sender=sender, signal=self, **kwargs)))
            except Exception as exc:
                logger.exception("signal %s receiver %r raised", self.name, receiver)
                out.append((receiver, exc))
        return out

    def __repr__(self) -> str:
        return f"<Signal: {self.name}>"


def _matches(wanted: Any, sender: Any) -> bool:
    if wanted is sender or wanted == sender:
        return True
    return isinstance(wanted, str) and getattr(sender, "name", None) == wanted


before_task_publish = Signal("before_task_publish", "Before a task message is published.")
after_task_publish = Signal("after_task_publish", "After a task message is published.")
task_prerun = Signal("task_prerun", "In the executing process, before the task runs.")
task_postrun = Signal("task_postrun", "In the executing process, after the task ran.")
task_success = Signal("task_success", "The task returned; ``result`` is its value.")
task_failure = Signal("task_failure", "The task raised; ``exception`` and ``traceback``.")
task_retry = Signal("task_retry", "The task asked to be retried; ``reason``.")
task_revoked = Signal("task_revoked", "A revoked or expired task was not run, or was stopped.")
worker_ready = Signal("worker_ready", "The worker is consuming.")
worker_shutdown = Signal("worker_shutdown", "The worker is shutting down.")
worker_process_init = Signal("worker_process_init", "A prefork child process started.")

__all__ = [
    "Signal",
    "after_task_publish",
    "before_task_publish",
    "task_failure",
    "task_postrun",
    "task_prerun",
    "task_retry",
    "task_revoked",
    "task_success",
    "worker_process_init",
    "worker_ready",
    "worker_shutdown",
]
