"""Results in this process's memory, for tests and eager use."""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from typing import Any

from celeriac.backends.base import EncodedResult, ResultBackend
from celeriac.states import SUCCESS


class MemoryBackend(ResultBackend):
    def __init__(self, url: str = "memory://", **kwargs: Any) -> None:
        super().__init__(url, **kwargs)
        self._cond = threading.Condition()
        self._data: dict[str, tuple[str, bytes, float | None]] = {}
        self._version = 0

    def _store(self, items: Sequence[EncodedResult]) -> None:
        now = time.time()
        expires_at = now + self.expires if self.expires else None
        with self._cond:
            for task_id, state, data in items:
                held = self._data.get(task_id)
                # A SUCCESS is final until it expires, like Celery's key with a TTL.
                if held is not None and held[0] == SUCCESS and (held[2] is None or held[2] >= now):
                    continue
                self._data[task_id] = (state, data, expires_at)
            self._version += 1
            self._cond.notify_all()

    def _load(self, task_id: str) -> bytes | None:
        with self._cond:
            held = self._data.get(task_id)
        if held is None or (held[2] is not None and held[2] < time.time()):
            return None
        return held[1]

    def _delete(self, task_id: str) -> None:
        with self._cond:
            self._data.pop(task_id, None)

    def _change_token(self) -> Any:
        return self._version

    def _wait_for_change(self, task_id: str, token: Any, timeout: float) -> None:
        with self._cond:
            self._cond.wait_for(lambda: self._version != token, timeout)
