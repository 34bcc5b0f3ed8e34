"""Results in Redis, in Celery's layout (PROTOCOL.md §4): a Celery client reads ours and we read
Celery's.

``celery-task-meta-<id>`` holds the document with ``result_expires`` as its TTL; every write is
also published on the channel of the same name, so a waiting ``get()`` wakes at once instead of
polling. A wait with a timeout keeps to it, reconnections and retries included (its reads run
within :func:`.deadline.deadline`). Writes go through ``redis.lua``: one call per batch, and a
stored SUCCESS is never replaced (Celery's rule). Chords count in Celery 5.7's keys
(``celery-taskset-meta-<gid>.j``, ``.s``, ``.t``, ``.d``, ``.c``), so a chord started by Celery
can be finished by Celeriac and the other way round; saved groups are
``celery-taskset-meta-<gid>``.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Sequence
from typing import Any

import redis
from redis.client import PubSub

from celeriac.backends.base import (
    CHORD_CLAIM_STALE,
    ChordPart,
    EncodedResult,
    ResultBackend,
    wait_deadline,
)
from celeriac.exceptions import BackendError
from celeriac.protocol.results import make_meta
from celeriac.states import READY_STATES
from celeriac.transports.redis.connection import RedisTarget
from celeriac.transports.redis.deadline import deadline
from celeriac.transports.redis.options import RedisBackendOptions
from celeriac.transports.redis.scripts import evalsha, execute, lua

KEY_PREFIX = "celery-task-meta-"
GROUP_PREFIX = "celery-taskset-meta-"
#: How long a finished chord's "done" marker keeps late duplicate header results out (Celery: 300).
_CHORD_DONE_TTL = 300
logger = logging.getLogger("celeriac.backend.redis")


class RedisBackend(ResultBackend):
    options_class = RedisBackendOptions
    options: RedisBackendOptions
    bounded_reads = True  # _load and _wait_for_change run within wait_deadline()
    stores_and_reads_together = True  # the script's store_read

    def __init__(self, url: str, *, target: RedisTarget, **kwargs: Any) -> None:
        super().__init__(url, **kwargs)
        self.client: redis.Redis = target.client
        self._conns = target.conns
        prefix = target.prefix
        if prefix and prefix[-1] not in ":_-.":  # Celery's backend adds the separator too
            prefix += "_"
        self.prefix = prefix + KEY_PREFIX
        self.group_prefix = prefix + GROUP_PREFIX
        self._script = self.client.register_script(lua("store_results.lua", "backend.lua"))
        self._local = threading.local()
        self._listeners: list[PubSub] = []
        self._listeners_lock = threading.Lock()

    def key(self, task_id: str) -> str:
        return self.prefix + task_id

    @property
    def expires_ms(self) -> int:
        """``result_expires`` as the scripts take it (0: results do not expire)."""
        return max(1, int(self.expires * 1000)) if self.expires else 0

    def _store(self, items: Sequence[EncodedResult]) -> None:
        ttl_ms = self.expires_ms
        keys = [self.key(r.task_id) for r in items]
        self._run("store", keys, ttl_ms, *(r.meta for r in items))

    def _run(self, command: str, keys: Sequence[str], *args: Any) -> Any:
        try:
            with self._conns.command() as client:
                return evalsha(client, self._script, [command, *args], keys)
        except redis.RedisError as exc:
            raise BackendError(f"Redis result backend: {command} failed: {exc}") from exc

    def _load(self, task_id: str) -> bytes | None:
        fresh = getattr(self._local, "fresh", None)
        if fresh is not None:
            # The document a waiter just received on the result's channel: it is what a GET
            # would return now, one round trip sooner.
            self._local.fresh = None
            if fresh[0] == task_id and time.monotonic() - fresh[2] < 1.0:
                return bytes(fresh[1])
        try:
            with deadline(wait_deadline()), self._conns.command() as client:
                data: Any = execute(client, "GET", self.key(task_id))
        except redis.RedisError as exc:
            raise BackendError(f"reading result {task_id} from Redis failed: {exc}") from exc
        return None if data is None else bytes(data)

    # -- chords and groups, in Celery's keys ------------------------------------------------------
    def _expiry(self) -> int:
        return max(1, int(self.expires)) if self.expires else 0

    def chord_start(self, group_id: str, size: int) -> None:
        base = self.group_prefix + group_id
        try:
            with self.client.pipeline() as pipe:
                pipe.delete(base + ".c")  # a re-applied frozen chord reuses its group id
                pipe.set(base + ".s", size, ex=self._expiry() or None)
                pipe.execute()
        except redis.RedisError as exc:
            raise BackendError(f"starting chord {group_id} failed: {exc}") from exc

    def chord_record(self, parts: Sequence[ChordPart]) -> list[str]:
        # Celery's bytes: a result written twice (by us and by a Celery worker after a crash)
        # must be one member of the sorted set, counted once.
        serializer = self.registry.get(self.serializer)
        dumps = serializer.exact_dumps or serializer.dumps
        args: list[Any] = []
        for p in parts:
            result = self.decode_meta(p.meta).get("result")
            member = dumps([1, p.task_id, p.state, result])
            size = "" if p.size is None else int(p.size)
            args += [p.group_id, int(p.index), p.task_id, member, size]
        if not args:
            return []
        stale = int(CHORD_CLAIM_STALE)
        claimed = self._run("chord", [], self.group_prefix, self._expiry(), stale, *args)
        return [_text(gid) for gid in claimed]

    def chord_results(self, group_id: str) -> list[EncodedResult]:
        try:
            members: Any = self.client.zrange(self.group_prefix + group_id + ".j", 0, -1)
        except redis.RedisError as exc:
            raise BackendError(f"reading chord {group_id} failed: {exc}") from exc
        loads = self.registry.get(self.serializer).loads
        out: list[EncodedResult] = []
        for member in members:
            _, task_id, state, result = loads(member)
            meta = make_meta(task_id, state, result, group_id=group_id)
            out.append(EncodedResult(task_id, state, self.encode_meta(meta)))
        return out

    def chord_done(self, group_id: str) -> None:
        base = self.group_prefix + group_id
        keys = [base + suffix for suffix in (".j", ".t", ".s", ".d", ".c")]
        self._run("chord_done", keys, max(_CHORD_DONE_TTL, int(CHORD_CLAIM_STALE * 2)))

    def save_group(self, group_id: str, result_tuple: Any) -> None:
        data = self.encode_meta({"result": result_tuple})
        try:
            self.client.set(self.group_prefix + group_id, data, ex=self._expiry() or None)
        except redis.RedisError as exc:
            raise BackendError(f"saving group {group_id} failed: {exc}") from exc

    def restore_group(self, group_id: str) -> Any:
        try:
            data: Any = self.client.get(self.group_prefix + group_id)
        except redis.RedisError as exc:
            raise BackendError(f"reading group {group_id} failed: {exc}") from exc
        return None if data is None else self.decode_meta(data).get("result")

    def forget_group(self, group_id: str) -> None:
        try:
            self.client.delete(self.group_prefix + group_id)
        except redis.RedisError as exc:
            raise BackendError(f"forgetting group {group_id} failed: {exc}") from exc

    def store_then_read_states(
        self, items: Sequence[EncodedResult], task_ids: Sequence[str]
    ) -> dict[str, str]:
        """One script call: the results stored, then the documents of ``task_ids`` read."""
        if not items:
            return self.get_states(task_ids)
        ids = list(task_ids)
        stored = [self.key(r.task_id) for r in items]
        keys = [*stored, *(self.key(t) for t in ids)]
        metas = (r.meta for r in items)
        docs = self._run("store_read", keys, self.expires_ms, len(stored), *metas)
        return self._states(ids, docs)

    def get_states(self, task_ids: Sequence[str]) -> dict[str, str]:
        ids = list(task_ids)
        if not ids:
            return {}
        try:
            # a worker's lookup before each batch it runs (a broker other than this Redis)
            with self._conns.command() as client:
                docs: Any = execute(client, "MGET", *(self.key(t) for t in ids))
        except redis.RedisError as exc:
            raise BackendError(f"reading {len(ids)} result state(s) failed: {exc}") from exc
        return self._states(ids, docs)

    def _states(self, ids: list[str], docs: Any) -> dict[str, str]:
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
            self._local.confirmed = False
            with self._listeners_lock:
                self._listeners.append(listener)
        return listener

    def _expect(self, task_id: str) -> None:
        """Send the SUBSCRIBE for ``task_id``'s channel without waiting for Redis to confirm:
        it travels while the caller's first GET does, so a result not ready yet costs two round
        trips before the wait (this and the GET after the confirmation), not three."""
        try:
            with deadline(wait_deadline()):
                self._send_subscribe(self._listener(), self.key(task_id))
        except redis.RedisError as exc:
            logger.warning("subscribing to result %s: %s", task_id, exc)
            self._drop_listener()

    def _send_subscribe(self, listener: PubSub, channel: str) -> None:
        current = self._local.channel
        if current == channel:
            return
        if current is not None:
            if not self._local.confirmed:
                # The last wait found its result at once and read no confirmation: read what
                # came since, so a long join cannot pile confirmations up unread.
                while listener.get_message(timeout=0.0) is not None:
                    pass
            listener.unsubscribe(current)  # type: ignore[no-untyped-call]
        listener.subscribe(channel)
        self._local.channel = channel
        self._local.confirmed = False

    def _subscribe(self, listener: PubSub, channel: str, until: float) -> None:
        """Subscribe and wait for Redis to confirm: only then can no publish slip past."""
        self._send_subscribe(listener, channel)
        if self._local.confirmed:
            return
        while time.monotonic() < until:
            msg = listener.get_message(timeout=max(0.0, until - time.monotonic()))
            if msg and msg["type"] == "subscribe" and _text(msg["channel"]) == channel:
                self._local.confirmed = True
                return

    def _wait_for_change(self, task_id: str, token: Any, timeout: float) -> None:
        until = time.monotonic() + timeout
        channel = self.key(task_id)
        try:
            with deadline(wait_deadline()):
                listener = self._listener()
                self._subscribe(listener, channel, until)
                # Re-read after subscribing: a result stored before the subscription took
                # effect was published to nobody, but it is in the key.
                with self._conns.command() as client:
                    data: Any = execute(client, "GET", channel)
                if data is not None and self.decode_meta(data).get("status") in READY_STATES:
                    self._local.fresh = (task_id, data, time.monotonic())  # no third GET
                    return
                while (left := until - time.monotonic()) > 0:
                    msg = listener.get_message(timeout=left)
                    if msg and msg["type"] == "message" and _text(msg["channel"]) == channel:
                        self._local.fresh = (task_id, msg["data"], time.monotonic())
                        return
        except redis.RedisError as exc:
            # Start afresh next time; the caller's next read reports Redis being down.
            logger.warning("waiting for result %s: %s", task_id, exc)
            self._drop_listener()
            time.sleep(min(0.1, max(0.0, until - time.monotonic())))

    def _drop_listener(self) -> None:
        listener = getattr(self._local, "pubsub", None)
        self._local.pubsub = None
        self._local.channel = None
        self._local.confirmed = False
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
        super().close()


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value
