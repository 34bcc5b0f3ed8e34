"""Results in Redis, in Celery's layout (PROTOCOL.md §4): a Celery client reads ours and we read
Celery's.

``celery-task-meta-<id>`` holds the document with ``result_expires`` as its TTL; every write is
also published on the channel of the same name, so a waiting ``get()`` wakes at once instead of
polling. Writes go through ``redis.lua``: one call per batch, and a stored SUCCESS is never
replaced (Celery's rule).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Sequence
from importlib import resources
from typing import Any

import redis
from redis.client import PubSub

from celeriac._redis import connect
from celeriac.backends.base import EncodedResult, ResultBackend
from celeriac.exceptions import BackendError
from celeriac.states import READY_STATES

KEY_PREFIX = "celery-task-meta-"
logger = logging.getLogger("celeriac.backend.redis")


class RedisBackend(ResultBackend):
    def __init__(self, url: str, **kwargs: Any) -> None:
        super().__init__(url, **kwargs)
        target = connect(url)
        self.client: redis.Redis = target.client
        self.prefix = target.prefix + KEY_PREFIX
        source = resources.files("celeriac.backends").joinpath("redis.lua").read_text()
        self._script = self.client.register_script(source)
        self._local = threading.local()
        self._listeners: list[PubSub] = []
        self._listeners_lock = threading.Lock()

    def key(self, task_id: str) -> str:
        return self.prefix + task_id

    def _store(self, items: Sequence[EncodedResult]) -> None:
        ttl_ms = max(1, int(self.expires * 1000)) if self.expires else 0
        try:
            self._script(
                keys=[self.key(task_id) for task_id, _, _ in items],
                args=[ttl_ms, *(data for _, _, data in items)],
            )
        except redis.RedisError as exc:
            raise BackendError(f"storing {len(items)} result(s) in Redis failed: {exc}") from exc

    def _load(self, task_id: str) -> bytes | None:
        try:
            data: Any = self.client.get(self.key(task_id))
        except redis.RedisError as exc:
            raise BackendError(f"reading result {task_id} from Redis failed: {exc}") from exc
        return None if data is None else bytes(data)

    def get_states(self, task_ids: Sequence[str]) -> dict[str, str]:
        ids = list(task_ids)
        try:
            docs: Any = self.client.mget([self.key(t) for t in ids]) if ids else []
        except redis.RedisError as exc:
            raise BackendError(f"reading {len(ids)} result state(s) failed: {exc}") from exc
        return {
            task_id: str(self.decode_meta(doc).get("status"))
            for task_id, doc in zip(ids, docs, strict=True)
            if doc is not None
        }

    def _delete(self, task_id: str) -> None:
        try:
            self.client.delete(self.key(task_id))
        except redis.RedisError as exc:
            raise BackendError(f"deleting result {task_id} from Redis failed: {exc}") from exc

    # -- waiting on pub/sub ---------------------------------------------------------------------
    def _listener(self) -> PubSub:
        listener: PubSub | None = getattr(self._local, "pubsub", None)
        if listener is None:
            listener = self.client.pubsub()  # type: ignore[no-untyped-call]
            self._local.pubsub = listener
            self._local.channel = None
            with self._listeners_lock:
                self._listeners.append(listener)
        return listener

    def _subscribe(self, listener: PubSub, channel: str, deadline: float) -> None:
        """Subscribe and wait for Redis to confirm: only then can no publish slip past."""
        current = self._local.channel
        if current == channel:
            return
        if current is not None:
            listener.unsubscribe(current)  # type: ignore[no-untyped-call]
        listener.subscribe(channel)
        self._local.channel = channel
        while time.monotonic() < deadline:
            msg = listener.get_message(timeout=max(0.0, deadline - time.monotonic()))
            if msg and msg["type"] == "subscribe" and _text(msg["channel"]) == channel:
                return

    def _wait_for_change(self, task_id: str, token: Any, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        channel = self.key(task_id)
        try:
            listener = self._listener()
            self._subscribe(listener, channel, deadline)
            # Re-read after subscribing: a result stored before the subscription took effect
            # was published to nobody, but it is in the key.
            data: Any = self.client.get(channel)
            if data is not None and self.decode_meta(data).get("status") in READY_STATES:
                return
            while (left := deadline - time.monotonic()) > 0:
                msg = listener.get_message(timeout=left)
                if msg and msg["type"] == "message" and _text(msg["channel"]) == channel:
                    return
        except redis.RedisError as exc:
            # Start afresh next time; the caller's next read reports Redis being down.
            logger.warning("waiting for result %s: %s", task_id, exc)
            self._drop_listener()
            time.sleep(min(0.1, max(0.0, deadline - time.monotonic())))

    def _drop_listener(self) -> None:
        listener = getattr(self._local, "pubsub", None)
        self._local.pubsub = None
        self._local.channel = None
        if listener is not None:
            with self._listeners_lock:
                if listener in self._listeners:
                    self._listeners.remove(listener)
            listener.close()

    def close(self) -> None:
        with self._listeners_lock:
            listeners, self._listeners = self._listeners, []
        for listener in listeners:
            listener.close()
        self._local = threading.local()
        self.client.close()


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value
