"""Remote control inside one process (tests, ``memory://``): queues in a registry per URL."""

from __future__ import annotations

import queue
import threading
from typing import Any

from celeriac.control.mailbox import Mailbox, Raw


class _Board:
    """The nodes and clients of one ``memory://`` URL."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.nodes: dict[int, queue.SimpleQueue[Raw]] = {}
        self.replies: dict[str, queue.SimpleQueue[Raw]] = {}


_BOARDS: dict[str, _Board] = {}
_BOARDS_LOCK = threading.Lock()


def _board(url: str) -> _Board:
    with _BOARDS_LOCK:
        return _BOARDS.setdefault(url, _Board())


def _drain(q: queue.SimpleQueue[Raw], timeout: float) -> list[Raw]:
    try:
        out = [q.get(timeout=max(0.0, timeout))]
    except queue.Empty:
        return []
    while True:
        try:
            out.append(q.get_nowait())
        except queue.Empty:
            return out


class MemoryMailbox(Mailbox):
    def __init__(self, url: str) -> None:
        super().__init__()
        self._board = _board(url)
        self._inbox: queue.SimpleQueue[Raw] | None = None

    def _listen(self, node: str) -> None:
        self._inbox = queue.SimpleQueue()
        with self._board.lock:
            self._board.nodes[id(self)] = self._inbox

    def _receive(self, timeout: float) -> list[Raw]:
        assert self._inbox is not None
        return _drain(self._inbox, timeout)

    def _reply(self, oid: str, body: dict[str, Any], headers: dict[str, Any]) -> None:
        with self._board.lock:
            box = self._board.replies.get(oid)
        if box is not None:
            box.put((body, headers))

    def _publish(self, body: dict[str, Any], headers: dict[str, Any]) -> None:
        with self._board.lock:
            boxes = list(self._board.nodes.values())
        for box in boxes:
            box.put((body, headers))

    def _open_replies(self, oid: str) -> None:
        with self._board.lock:
            self._board.replies[oid] = queue.SimpleQueue()

    def _replies(self, oid: str, timeout: float) -> list[Raw]:
        with self._board.lock:
            box = self._board.replies.get(oid)
        return _drain(box, timeout) if box is not None else []

    def _close_replies(self, oid: str) -> None:
        with self._board.lock:
            self._board.replies.pop(oid, None)

    def _close(self) -> None:
        with self._board.lock:
            self._board.nodes.pop(id(self), None)
