"""Readiness: the worker consumes, and its broker answers.

Whether the worker consumes is its own state (started, not stopping; a prefork worker has at
least one child). Whether the broker answers is probed: a :class:`BrokerProbe` thread asks the
broker for a queue's depth every ``interval`` s on connections of its own, each probe bounded
by ``timeout`` s (it runs on a thread of its own, so a connection that hangs counts as down
after that time). So the worker turns unready at most ``interval + timeout`` s (3 s) after its
broker goes away, and ready again about ``interval`` s after it answers.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

logger = logging.getLogger("celeriac.health")


class BrokerProbe:
    """Probes ``check`` (a broker round trip that raises when it fails) in the background."""

    def __init__(
        self, check: Callable[[], object], *, interval: float = 1.0, timeout: float = 2.0
    ) -> None:
        self.check, self.interval, self.timeout = check, interval, timeout
        self.ok = False
        #: what the last failed probe said (for the ``/readyz`` body and the log)
        self.error = "not probed yet"
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._run, name="celeriac-probe", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stopped.set()

    def _run(self) -> None:
        while not self._stopped.is_set():
            started = time.monotonic()
            self.probe_once()
            self._stopped.wait(max(0.0, self.interval - (time.monotonic() - started)))

    def probe_once(self) -> None:
        done = threading.Event()
        outcome: list[BaseException | None] = []

        def run() -> None:
            try:
                self.check()
                outcome.append(None)
            except Exception as exc:
                outcome.append(exc)
            finally:
                done.set()

        threading.Thread(target=run, name="celeriac-probe-call", daemon=True).start()
        finished = done.wait(self.timeout)
        error = f"no answer within {self.timeout:.1f}s" if not finished else outcome[0]
        self._set(error is None, str(error) if error is not None else "")
        if not finished:
            done.wait()  # one probe at a time: a hung call is not piled on

    def _set(self, ok: bool, error: str) -> None:
        first = self.error == "not probed yet"
        if ok != self.ok or (first and not ok):
            if ok:
                logger.log(logging.INFO if first else logging.WARNING, "broker answers: ready")
            else:
                logger.warning("broker does not answer: not ready (%s)", error)
        self.ok = ok
        self.error = error
