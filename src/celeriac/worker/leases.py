"""Keeping what a consumer holds: leases renewed, revocations watched.

* The :class:`LeaseKeeper` extends the lease of every held message a few times per visibility
  timeout, so only a dead worker's messages ever come back.
* The :class:`RevocationWatch` looks up the held tasks' states several times a second: REVOKED
  ones must not start, and running ones revoked with ``terminate`` are stopped.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING

from celeriac import states
from celeriac.exceptions import CeleriacError

if TYPE_CHECKING:
    from celeriac.backends.base import ResultBackend
    from celeriac.brokers.base import Broker, Delivery

logger = logging.getLogger("celeriac.worker")

_WATCH_INTERVAL = 0.2


class LeaseKeeper:
    """Renews the leases of ``held()`` every third of the broker's visibility timeout."""

    def __init__(self, broker: Broker, held: Callable[[], list[Delivery]]) -> None:
        self.broker = broker
        self.held = held
        self.interval = max(0.2, broker.visibility_timeout / 3)

    def run(self, stopped: threading.Event) -> None:
        while not stopped.wait(self.interval):
            self.renew()

    def renew(self) -> None:
        held = self.held()
        if not held:
            return
        try:
            self.broker.extend(held)
        except CeleriacError as exc:
            logger.error("lease renewal failed: %s", exc)


class RevocationWatch:
    """Tells ``revoke(task_id, terminate)`` about held tasks the result backend says are
    REVOKED, once each."""

    def __init__(
        self,
        backend: ResultBackend,
        task_ids: Callable[[], list[str]],
        revoke: Callable[[str, bool], None],
    ) -> None:
        self.backend = backend
        self.task_ids = task_ids
        self.revoke = revoke
        self._seen: set[str] = set()
        self._lock = threading.Lock()

    def run(self, stopped: threading.Event) -> None:
        while not stopped.wait(_WATCH_INTERVAL):
            self.check()

    def check(self) -> None:
        with self._lock:
            ids = [t for t in self.task_ids() if t not in self._seen]
        if not ids:
            return
        backend = self.backend
        try:
            for task_id, state in backend.get_states(ids).items():
                if state != states.REVOKED:
                    continue
                terminate = bool(backend.get_meta(task_id).get("revoke", {}).get("terminate"))
                with self._lock:
                    self._seen.add(task_id)
                logger.warning(
                    "task %s revoked%s", task_id, "; terminating it" if terminate else ""
                )
                self.revoke(task_id, terminate)
        except CeleriacError as exc:
            logger.warning("could not check for revoked tasks: %s", exc)

    def forget(self, task_ids: Iterable[str]) -> None:
        """These tasks were settled: no need to remember having seen them."""
        with self._lock:
            self._seen.difference_update(task_ids)
