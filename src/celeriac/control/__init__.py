"""Controlling tasks and workers: ``app.control``, as Celery's.

Revocations are stored in the result backend as the task's REVOKED state, with a
``terminate`` flag, for as long as results are kept: every Celeriac worker checks them before
it starts a task, including workers started after the revoke, and running tasks are checked
several times a second. They are also broadcast as Celery's ``revoke`` command, so Celery
workers honour them, and so they work with no result backend (or ``rpc://``, which keeps no
state) too.

Every other command travels only through the broadcast mailbox (:mod:`.mailbox`, Celery's
pidbox): ``inspect()`` asks and collects replies, the control commands change running workers.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

from celeriac import states
from celeriac.backends.base import DisabledBackend, EncodedResult
from celeriac.control.inspect import Inspect
from celeriac.exceptions import TaskRevokedError
from celeriac.protocol.results import make_meta

if TYPE_CHECKING:
    from celeriac.app import Celeriac

__all__ = ["Control", "Inspect"]


class Control:
    def __init__(self, app: Celeriac) -> None:
        self.app = app

    def broadcast(
        self,
        command: str,
        arguments: dict[str, Any] | None = None,
        destination: list[str] | None = None,
        reply: bool = False,
        timeout: float = 1.0,
        limit: int | None = None,
        callback: Callable[[dict[str, Any]], None] | None = None,
    ) -> list[dict[str, Any]]:
        """Send ``command`` to every worker (or those named in ``destination``); with
        ``reply``, the replies (``{node: reply}`` each) that came within ``timeout`` s."""
        mailbox = self.app.connections.mailbox()
        try:
            return mailbox.call(
                command,
                arguments,
                destination=destination,
                reply=reply,
                timeout=timeout,
                limit=limit,
                on_reply=callback,
            )
        finally:
            mailbox.close()

    def inspect(
        self,
        destination: list[str] | None = None,
        timeout: float = 1.0,
        limit: int | None = None,
    ) -> Inspect:
        """Ask workers what they do: ``inspect().active()`` is ``{node: [request, ...]}``."""
        return Inspect(self, destination=destination, timeout=timeout, limit=limit)

    def ping(
        self, destination: list[str] | None = None, timeout: float = 1.0
    ) -> list[dict[str, Any]]:
        """``[{node: {"ok": "pong"}}, ...]`` from the workers that answered in time."""
        return self.broadcast("ping", destination=destination, reply=True, timeout=timeout)

    def revoke(
        self,
        task_id: str | Iterable[str],
        *,
        terminate: bool = False,
        signal: str | None = None,
        destination: list[str] | None = None,
        reply: bool = False,
        timeout: float = 1.0,
    ) -> list[dict[str, Any]]:
        """Revoke tasks: not started ones never start; with ``terminate``, running ones stop
        (killed with ``signal``, SIGTERM by default; see the worker's notes on prefork).

        A task that already succeeded stays SUCCESS. With ``reply``, the workers' answers.
        """
        ids = [task_id] if isinstance(task_id, str) else list(task_id)
        arguments = {"task_id": ids, "terminate": bool(terminate), "signal": signal or "SIGTERM"}
        # Broadcast first, store after (also when the broadcast fails): a worker running the
        # task would otherwise see the stored flag, end the task itself, and answer the
        # broadcast that it knows of no such task.
        try:
            return self.broadcast(
                "revoke", arguments, destination=destination, reply=reply, timeout=timeout
            )
        finally:
            self._store_revoked(ids, terminate, signal)

    def _store_revoked(self, ids: list[str], terminate: bool, signal: str | None) -> None:
        backend = self.app.backend
        if isinstance(backend, DisabledBackend):
            return
        items = []
        for tid in ids:
            meta = make_meta(tid, states.REVOKED, TaskRevokedError("revoked"))
            meta["revoke"] = {"terminate": bool(terminate), "signal": signal or "SIGTERM"}
            items.append(EncodedResult(tid, states.REVOKED, backend.encode_meta(meta)))
        backend.store_encoded(items)

    # -- control commands, as Celery's (no reply unless asked) --------------------------------
    def _command(self, name: str, arguments: dict[str, Any], **kwargs: Any) -> list[dict[str, Any]]:
        return self.broadcast(name, arguments, **kwargs)

    def rate_limit(
        self, task_name: str, rate_limit: str | float | None, **kwargs: Any
    ) -> list[dict[str, Any]]:
        """Change ``task_name``'s rate limit on the workers (``"10/m"``; None: none)."""
        return self._command(
            "rate_limit", {"task_name": task_name, "rate_limit": rate_limit}, **kwargs
        )

    def time_limit(
        self,
        task_name: str,
        soft: float | None = None,
        hard: float | None = None,
        **kwargs: Any,
    ) -> list[dict[str, Any]]:
        """Change ``task_name``'s time limits on the workers."""
        return self._command(
            "time_limit", {"task_name": task_name, "soft": soft, "hard": hard}, **kwargs
        )

    def shutdown(self, **kwargs: Any) -> list[dict[str, Any]]:
        """Warm-stop the workers."""
        return self._command("shutdown", {}, **kwargs)

    def pool_grow(self, n: int = 1, **kwargs: Any) -> list[dict[str, Any]]:
        return self._command("pool_grow", {"n": n}, **kwargs)

    def pool_shrink(self, n: int = 1, **kwargs: Any) -> list[dict[str, Any]]:
        return self._command("pool_shrink", {"n": n}, **kwargs)

    def add_consumer(self, queue: str, **kwargs: Any) -> list[dict[str, Any]]:
        """Start consuming ``queue`` on the workers."""
        return self._command("add_consumer", {"queue": queue}, **kwargs)

    def cancel_consumer(self, queue: str, **kwargs: Any) -> list[dict[str, Any]]:
        """Stop consuming ``queue`` on the workers."""
        return self._command("cancel_consumer", {"queue": queue}, **kwargs)
