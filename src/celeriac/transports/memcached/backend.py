"""Results in memcached: a cache, so a result may be gone before it expires.

``celery-task-meta-<id>`` (Celery's key name) holds the document, with ``result_expires`` as its
expiry time. memcached may evict any item early when it needs the memory, and keeps nothing
over a restart: a result that is gone reads as PENDING, as one never stored does (see the
README). memcached notifies no one of a change, so ``get()`` polls (see ``polling_interval``).

A stored SUCCESS is never replaced (Celery's rule): a write is an ``add``, and when a document
is already there, a compare-and-swap that leaves a SUCCESS alone.

Chords count with ``incr``, each header task once however often it is delivered: a part first
``add``s its own key ``celery-taskset-meta-<gid>.p<index>`` (which fails for a redelivered
part), and only a part that added it increments ``.n``. The part whose increment reaches the
size (``.s``) checks that every part's key is there and claims the chord by ``add``ing ``.c``
(its task id, for :data:`CHORD_CLAIM_STALE` s). A redelivered part does not count again, but
checks the parts and claims too: its first delivery may have died between the ``add`` and the
``incr``, or after claiming and before the body was sent (a claim held by its own task id is
claimed again, anyone else's is left until it expires). ``chord_done`` replaces ``.c`` with a
"done" marker that keeps late duplicates out. All of one chord's keys live on one server.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import threading
import time
from collections.abc import Sequence
from typing import Any

from pymemcache.client.base import Client

from celeriac.backends.base import CHORD_CLAIM_STALE, ChordPart, EncodedResult, ResultBackend
from celeriac.exceptions import BackendError
from celeriac.states import SUCCESS
from celeriac.transports.memcached.connection import Servers
from celeriac.transports.memcached.options import MemcachedOptions

KEY_PREFIX = "celery-task-meta-"
GROUP_PREFIX = "celery-taskset-meta-"
#: bytes of an item that are not the document: memcached's item header (48-56 bytes with the
#: CAS value), the key (at most 250) and the value's line ending; reserved so that a document
#: of :attr:`MemcachedBackend.max_item_size` bytes is accepted by a server at ``item_size_max``
ITEM_OVERHEAD = 512
#: memcached reads an expiry time over 30 days as a Unix time, not a number of seconds
_RELATIVE_TTL_MAX = 30 * 86400
#: s a finished chord's "done" marker keeps late duplicate header results out (as on Redis)
_CHORD_DONE_TTL = 300
#: s between the first two reads of a result a wait polls
_FIRST_POLL = 0.005
#: compare-and-swap attempts to store one result while others write it too
_CAS_ATTEMPTS = 20
_DONE = b"done"
logger = logging.getLogger("celeriac.backend.memcached")


class MemcachedBackend(ResultBackend):
    options_class = MemcachedOptions
    options: MemcachedOptions
    #: A read waits up to ``socket_timeout`` for its reply (twice when the first connection was
    #: dropped): a wait with a timeout runs on a helper thread that keeps to it.
    bounded_reads = False

    def __init__(self, url: str, *, servers: Servers, **kwargs: Any) -> None:
        super().__init__(url, **kwargs)
        self.servers = servers
        self.max_item_size = max(1, self.options.item_size_max - ITEM_OVERHEAD)
        self.prefix = self.options.key_prefix + KEY_PREFIX
        self.group_prefix = self.options.key_prefix + GROUP_PREFIX
        self._polls = threading.local()

    # -- keys and expiry -----------------------------------------------------------------------
    def key(self, task_id: str) -> str:
        return _valid_key(self.prefix + task_id)

    def _ttl(self, seconds: float | None) -> int:
        """memcached's expiry time for ``seconds`` (0: never)."""
        if not seconds:
            return 0
        # memcached counts whole seconds from its clock's last tick: an item set to expire in
        # N s goes N-1 to N s later, so one more keeps it at least ``seconds``.
        ttl = math.ceil(seconds) + 1
        return ttl if ttl <= _RELATIVE_TTL_MAX else int(time.time()) + ttl

    # -- results -----------------------------------------------------------------------------
    def _store(self, items: Sequence[EncodedResult]) -> None:
        ttl = self._ttl(self.expires)
        for item in items:
            key = self.key(item.task_id)
            self.servers.call(
                key, f"storing result {item.task_id}", self._store_one, key, item, ttl
            )

    def _store_one(self, client: Client, key: str, item: EncodedResult, ttl: int) -> None:
        for _ in range(_CAS_ATTEMPTS):
            if client.add(key, item.meta, expire=ttl, noreply=False):
                return
            held, cas = client.gets(key)
            if held is None:
                continue  # expired or evicted since the add: add again
            if self._status(held) == SUCCESS:
                return  # final: a late duplicate never replaces it
            if client.cas(key, item.meta, cas, expire=ttl, noreply=False):
                return
        raise BackendError(
            f"storing result {item.task_id}: written by others {_CAS_ATTEMPTS} times meanwhile"
        )

    def _status(self, data: bytes) -> object:
        try:
            return self.decode_meta(data).get("status")
        except Exception:  # unreadable: not a SUCCESS we must keep
            logger.warning("replacing an unreadable document in memcached")
            return None

    def _load(self, task_id: str) -> bytes | None:
        key = self.key(task_id)
        data = self.servers.call(key, f"reading result {task_id}", lambda c: c.get(key))
        return None if data is None else bytes(data)

    def _delete(self, task_id: str) -> None:
        key = self.key(task_id)
        self.servers.call(key, f"deleting result {task_id}", lambda c: c.delete(key))

    def get_states(self, task_ids: Sequence[str]) -> dict[str, str]:
        by_server: dict[str, dict[str, str]] = {}
        for task_id in task_ids:
            key = self.key(task_id)
            by_server.setdefault(self.servers.node(key), {})[key] = task_id
        out: dict[str, str] = {}
        for keys in by_server.values():
            route = next(iter(keys))
            docs = self.servers.call(
                route, f"reading {len(keys)} result state(s)", Client.get_many, list(keys)
            )
            for key, doc in docs.items():
                out[keys[key]] = str(self.decode_meta(bytes(doc)).get("status"))
        return out

    def _wait_for_change(self, task_id: str, token: Any, timeout: float) -> None:
        # No notifications: poll, soon after the first read and then less often, up to
        # polling_interval. A wait for another task, or one that began anew, starts soon again.
        last = getattr(self._polls, "last", None)
        now = time.monotonic()
        pause = _FIRST_POLL
        if last is not None and last[0] == task_id and now - last[2] < last[1] + 0.05:
            pause = min(last[1] * 2, self.options.polling_interval)
        self._polls.last = (task_id, pause, now + min(pause, timeout))
        time.sleep(max(0.0, min(pause, timeout)))

    # -- groups --------------------------------------------------------------------------------
    def save_group(self, group_id: str, result_tuple: Any) -> None:
        key = _valid_key(self.group_prefix + group_id)
        data, ttl = self.encode_meta({"result": result_tuple}), self._ttl(self.expires)
        self.servers.call(key, f"saving group {group_id}", lambda c: c.set(key, data, expire=ttl))

    def restore_group(self, group_id: str) -> Any:
        key = _valid_key(self.group_prefix + group_id)
        data = self.servers.call(key, f"reading group {group_id}", lambda c: c.get(key))
        return None if data is None else self.decode_meta(bytes(data)).get("result")

    def forget_group(self, group_id: str) -> None:
        key = _valid_key(self.group_prefix + group_id)
        self.servers.call(key, f"forgetting group {group_id}", lambda c: c.delete(key))

    # -- chords --------------------------------------------------------------------------------
    def _chord(self, group_id: str) -> str:
        """The chord's key base, which routes all its keys to one server."""
        return _valid_key(self.group_prefix + group_id)

    def chord_start(self, group_id: str, size: int) -> None:
        base, ttl = self._chord(group_id), self._ttl(self.expires)

        def start(c: Client) -> None:
            c.delete(base + ".c")  # a re-applied frozen chord reuses its group id
            c.set(base + ".s", str(int(size)).encode(), expire=ttl)
            c.set(base + ".n", b"0", expire=ttl)

        self.servers.call(base, f"starting chord {group_id}", start)

    def chord_record(self, parts: Sequence[ChordPart]) -> list[str]:
        by_group: dict[str, list[ChordPart]] = {}
        for part in parts:
            by_group.setdefault(part.group_id, []).append(part)
        claimed: list[str] = []
        for group_id, mine in by_group.items():
            base = self._chord(group_id)
            # Not retried as a whole on a dropped connection: an incr sent twice would count
            # a part twice. The caller's retry comes back as a redelivery, which is safe.
            what = f"recording chord {group_id}"
            if self.servers.call(base, what, self._record, base, mine, retry=False):
                claimed.append(group_id)
        return claimed

    def _record(self, c: Client, base: str, parts: list[ChordPart]) -> bool:
        """Count ``parts`` of one chord; True when this call claimed it."""
        ttl = self._ttl(self.expires)
        if c.get(base + ".c") == _DONE:
            return False  # a late duplicate of a finished chord
        size = next((p.size for p in parts if p.size is not None), None)
        if size is not None:  # a chord whose client did not start the count
            c.add(base + ".s", str(int(size)).encode(), expire=ttl)
        count, redelivered = None, False
        for part in parts:
            if c.add(f"{base}.p{part.index}", _pack(part), expire=ttl):
                count = c.incr(base + ".n", 1)
                if count is None:  # no counter yet: the first part of a chord nobody started
                    c.add(base + ".n", b"0", expire=ttl)
                    count = c.incr(base + ".n", 1)
            else:
                redelivered = True
        held = c.get(base + ".s")
        if held is None:
            return False  # size unknown (yet): the part that brings it completes the chord
        size = int(held)
        if not redelivered and (count is None or int(count) < size):
            return False
        # The count says complete, or cannot be trusted (a redelivery): the parts decide.
        present = c.get_many([f"{base}.p{i}" for i in range(size)])
        if len(present) < size:
            return False
        return self._claim(c, base, parts[-1].task_id.encode())

    def _claim(self, c: Client, base: str, claimer: bytes) -> bool:
        ttl = max(1, int(CHORD_CLAIM_STALE))
        if c.add(base + ".c", claimer, expire=ttl):
            return True
        held = c.get(base + ".c")
        if held is None:  # the claim expired just now
            return bool(c.add(base + ".c", claimer, expire=ttl))
        if held == claimer:  # the claimer's message came back: it claims again
            c.set(base + ".c", claimer, expire=ttl)
            return True
        return False

    def chord_results(self, group_id: str) -> list[EncodedResult]:
        base = self._chord(group_id)

        def read(c: Client) -> list[EncodedResult]:
            held = c.get(base + ".s")
            size = 0 if held is None else int(held)
            keys = [f"{base}.p{i}" for i in range(size)]
            found = c.get_many(keys)
            missing = [i for i, key in enumerate(keys) if key not in found]
            if held is None or missing:
                raise BackendError(
                    f"chord {group_id}: header results {missing or 'and size'} are gone from"
                    " memcached (evicted, or the server restarted)"
                )
            return [_unpack(bytes(found[key])) for key in keys]

        return self.servers.call(base, f"reading chord {group_id}", read)

    def chord_done(self, group_id: str) -> None:
        base = self._chord(group_id)

        def done(c: Client) -> None:
            held = c.get(base + ".s")
            size = 0 if held is None else int(held)
            c.delete_many([base + ".s", base + ".n", *(f"{base}.p{i}" for i in range(size))])
            c.set(base + ".c", _DONE, expire=max(_CHORD_DONE_TTL, int(CHORD_CLAIM_STALE * 2)))

        self.servers.call(base, f"finishing chord {group_id}", done)

    def close(self) -> None:
        self._polls = threading.local()
        super().close()


def _valid_key(key: str) -> str:
    """``key``, or a digest of it where memcached would refuse it (over 250 bytes, spaces,
    control characters, not ASCII); chord keys add up to 12 characters to it."""
    if len(key) <= 230 and key.isascii() and key.isprintable() and " " not in key:
        return key
    return "celeriac-sha256-" + hashlib.sha256(key.encode("utf-8", "surrogatepass")).hexdigest()


def _pack(part: ChordPart) -> bytes:
    # JSON escapes any newline in an id, so the first one ends the header
    return json.dumps([part.task_id, part.state]).encode() + b"\n" + part.meta


def _unpack(data: bytes) -> EncodedResult:
    head, _, meta = data.partition(b"\n")
    task_id, state = json.loads(head)
    return EncodedResult(str(task_id), str(state), meta)
