"""Controlling tasks and workers: ``app.control``.

Revocations are stored in the result backend as the task's REVOKED state, with a
``terminate`` flag, for as long as results are kept: every worker checks them before it starts
a task, including workers started after the revoke, and running tasks are checked several times
a second so ``terminate=True`` stops them promptly. No broadcast is needed, so nothing is lost
when a worker is down or a message is missed.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING

from celeriac import states
from celeriac.backends.base import EncodedResult
from celeriac.exceptions import TaskRevokedError
from celeriac.protocol.results import make_meta

if TYPE_CHECKING:
    from celeriac.app import Celeriac


class Control:
    def __init__(self, app: Celeriac) -> None:
        self.app = app

    def revoke(
        self,
        task_id: str | Iterable[str],
        *,
        terminate: bool = False,
        signal: str | None = None,
    ) -> None:
        """Revoke tasks: not started ones never start; with ``terminate``, running ones stop.

        ``signal`` is accepted for Celery compatibility; a terminated prefork task is killed.
        A task that already succeeded stays SUCCESS.
        """
        ids = [task_id] if isinstance(task_id, str) else list(task_id)
        backend = self.app.backend
        items = []
        for tid in ids:
            meta = make_meta(tid, states.REVOKED, TaskRevokedError("revoked"))
            meta["revoke"] = {"terminate": bool(terminate), "signal": signal or "SIGTERM"}
            items.append(EncodedResult(tid, states.REVOKED, backend.encode_meta(meta)))
        backend.store_encoded(items)
