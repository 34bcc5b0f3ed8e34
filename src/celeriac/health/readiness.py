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
import queue
import threading
import time
from collections.abc import Callable

logger = logging.getLogger("celeriac.health")


class BrokerProbe:
    """Probes ``check`` (a broker round trip that raises when it fails) in the background.

    The calls run on one thread of their own, kept for the probe's life: its connections stay
    open between probes (a thread per call opened a connection per probe, an SQLite file's
    schema check included), and a call that hangs holds up only the probes after it.
    """

    def __init__(
        self, check: Callable[[], object], *, interval: float = 1.0, timeout: float = 2.0
    ) -> None:
        self.check, self.interval, self.timeout = check, interval, timeout
        self.ok = False
        #: what the last failed probe said (for the ``/readyz`` body and the log)
        self.error = "not probed yet"
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._run, name="celeriac-probe", daemon=True)
        self._calls: queue.SimpleQueue[_Call | None] = queue.SimpleQueue()
        self._caller: threading.Thread | None = None

    def start(self) -> None:
        """Probe every ``interval`` s from now on (the first one after an interval: the caller
        probes once itself first, see ``worker/monitor.py``)."""
        self._thread.start()

    def stop(self) -> None:
        self._stopped.set()
        self._calls.put(None)

    def _run(self) -> None:
        pause = self.interval
        while not self._stopped.wait(pause):
            started = time.monotonic()
            self.probe_once()
            pause = max(0.0, self.interval - (time.monotonic() - started))

    def probe_once(self) -> None:
        call = _Call()
        if self._caller is None:
            self._caller = threading.Thread(
                target=self._serve_calls, name="celeriac-probe-call", daemon=True
            )
            self._caller.start()
        self._calls.put(call)
        finished = call.done.wait(self.timeout)
        error = f"no answer within {self.timeout:.1f}s" if not finished else call.error
        self._set(error is None, str(error) if error is not None else "")
        if not finished:
            call.done.wait()  # one probe at a time: a hung call is not piled on

    def _serve_calls(self) -> None:
        while (call := self._calls.get()) is not None:
            try:
                self.check()
            except Exception as exc:
                call.error = exc
            finally:
                call.done.set()

    def _set(self, ok: bool, error: str) -> None:
        first = self.error == "not probed yet"
        if ok != self.ok or (first and not ok):
            if ok:
                logger.log(logging.INFO if first else logging.WARNING, "broker answers: ready")
            else:
                logger.warning("broker does not answer: not ready (%s)", error)
        self.ok = ok
        self.error = error


class _Call:
    """One probe handed to the calling thread: done when it answered, with its error if any."""

    def __init__(self) -> None:
        self.done = threading.Event()
        self.error: Exception | None = None
