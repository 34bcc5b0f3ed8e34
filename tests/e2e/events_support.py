"""Listening to events in tests: Celery's own receiver in a thread, a bounded wait on what came."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

Event = dict[str, Any]


class CeleryListener:
    """``celery.events.EventReceiver`` on ``app.connection()``, collecting every event."""

    def __init__(self, app: Any) -> None:
        self.app = app
        self.events: list[Event] = []
        self._lock = threading.Lock()
        self._receiver: Any = None
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _collect(self, event: Event) -> None:
        with self._lock:
            self.events.append(event)

    def _run(self) -> None:
        try:
            with self.app.connection() as conn:
                self._receiver = self.app.events.Receiver(conn, handlers={"*": self._collect})
                self._receiver.capture(limit=None, timeout=None, wakeup=False)
        except BaseException as exc:  # shown by wait()
            self._error = exc

    def wait(self, check: Callable[[list[Event]], Any], timeout: float, what: str) -> Any:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._error is not None:
                raise AssertionError(f"Celery's receiver failed: {self._error!r}")
            with self._lock:
                found = check(list(self.events))
            if found:
                return found
            time.sleep(0.05)
        raise AssertionError(f"timed out after {timeout}s waiting for {what}: {self.events[-5:]}")

    def stop(self) -> None:
        if self._receiver is not None:
            self._receiver.should_stop = True
        self._thread.join(5)


def of(events: list[Event], kind: str, **fields: Any) -> list[Event]:
    return [
        e for e in events if e.get("type") == kind and all(e.get(k) == v for k, v in fields.items())
    ]


def task_events(events: list[Event], task_id: str) -> dict[str, Event]:
    return {e["type"]: e for e in events if e.get("uuid") == task_id}
