"""Results in this process's memory, for tests and eager use."""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from typing import Any

from celeriac.backends.base import CHORD_CLAIM_STALE, ChordPart, EncodedResult, ResultBackend
from celeriac.states import SUCCESS


class MemoryBackend(ResultBackend):
    #: Nothing here blocks for longer than a lock held for a dict update: a wait runs in the
    #: caller's thread (see ResultBackend.wait_for).
    bounded_reads = True

    def __init__(self, url: str = "memory://", **kwargs: Any) -> None:
        super().__init__(url, **kwargs)
        self._cond = threading.Condition()
        self._data: dict[str, tuple[str, bytes, float | None]] = {}
        self._version = 0
        self._chords: dict[str, dict[str, Any]] = {}
        self._groups: dict[str, Any] = {}

    def _store(self, items: Sequence[EncodedResult]) -> None:
        now = time.time()
        expires_at = now + self.expires if self.expires else None
        with self._cond:
            for task_id, state, data, *_route in items:
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

    def chord_start(self, group_id: str, size: int) -> None:
        with self._cond:
            self._chords[group_id] = {"size": size, "parts": {}, "claimed": None, "done": False}

    def chord_record(self, parts: Sequence[ChordPart]) -> list[str]:
        claimed: list[str] = []
        now = time.time()
        with self._cond:
            for part in parts:
                chord = self._chords.setdefault(
                    part.group_id,
                    {
                        "size": part.size,
                        "parts": {},
                        "claimed": None,
                        "claimer": None,
                        "done": False,
                    },
                )
                chord["parts"].setdefault(part.index, (part.task_id, part.state, part.meta))
            # The completing part claims; so does that part again when redelivered (see the
            # SQLite backend); anyone else once the claim is stale.
            claimers = {p.group_id: p.task_id for p in parts}
            for gid, claimer in claimers.items():
                chord = self._chords[gid]
                stale = chord["claimed"] is not None and chord["claimed"] < now - CHORD_CLAIM_STALE
                mine = chord.get("claimer") == claimer
                complete = chord["size"] is not None and len(chord["parts"]) >= chord["size"]
                if complete and not chord["done"] and (chord["claimed"] is None or stale or mine):
                    chord.update(claimed=now, claimer=claimer)
                    claimed.append(gid)
        return claimed

    def chord_results(self, group_id: str) -> list[EncodedResult]:
        with self._cond:
            parts = self._chords[group_id]["parts"]
            return [EncodedResult(*parts[i]) for i in sorted(parts)]

    def chord_done(self, group_id: str) -> None:
        with self._cond:
            self._chords[group_id].update(done=True, parts={})

    def save_group(self, group_id: str, result_tuple: Any) -> None:
        with self._cond:
            self._groups[group_id] = result_tuple

    def restore_group(self, group_id: str) -> Any:
        with self._cond:
            return self._groups.get(group_id)

    def forget_group(self, group_id: str) -> None:
        with self._cond:
            self._groups.pop(group_id, None)

    def _delete(self, task_id: str) -> None:
        with self._cond:
            self._data.pop(task_id, None)

    def _change_token(self) -> Any:
        return self._version

    def _wait_for_change(self, task_id: str, token: Any, timeout: float) -> None:
        with self._cond:
            self._cond.wait_for(lambda: self._version != token, timeout)
