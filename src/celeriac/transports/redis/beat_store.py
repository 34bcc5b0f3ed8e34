"""Beat state on the Redis broker's server (keys ``celeriac.beat.*`` under the key prefix).

The lease is a key set with ``SET NX PX``: Redis expires it by its own clock, so beats on
different machines need not agree on the time. The fence and the tick's compare-and-set run in
one Lua call (``beat_store.lua``). Ticks are stored as the ``repr`` of a float, which reads back
as the same float, so compare-and-set on the strings is exact.

The script carries the broker's own (``broker.lua``, as a function), so :class:`RedisTickSender`
claims a tick and stores its message in one call: the tick is recorded if and only if its
message is.
"""

from __future__ import annotations

import json
import time
from typing import TYPE_CHECKING, Any, cast

import redis

from celeriac.beat.store import BeatStore, EntryState, Lease, TickSender
from celeriac.exceptions import BrokerError
from celeriac.transports.options import BROKER, parse_options
from celeriac.transports.redis.connection import RedisTarget
from celeriac.transports.redis.options import RedisOptions
from celeriac.transports.redis.scripts import lua

if TYPE_CHECKING:
    from celeriac.protocol.publication import Publication
    from celeriac.transports.redis.broker import RedisBroker

# broker.lua reads its arguments from ARGV: made a function with ARGV as its parameter, it runs
# inside this script with the arguments it is given (beat_store.lua calls it ``broker``).
SCRIPT = (
    "local function broker(ARGV)\n"
    + lua("store_results.lua", "broker.lua")
    + "\nend\n"
    + lua("beat_store.lua")
)


def _num(value: float | None) -> str:
    return "" if value is None else repr(float(value))


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


class RedisBeatStore(BeatStore):
    def __init__(
        self, url: str, transport_options: dict[str, Any] | None = None, *, target: RedisTarget
    ) -> None:
        # The broker's options: a key the broker would refuse is refused here too.
        self.options = parse_options(RedisOptions, transport_options, url=url, setting=BROKER)
        self.client: redis.Redis = target.client
        self.prefix = target.prefix
        self._script = self.client.register_script(SCRIPT)

    def _key(self, name: str) -> str:
        return f"{self.prefix}celeriac.beat.{name}"

    def _call(self, *args: Any) -> int:
        try:
            return int(self._script(args=[args[0], self.prefix, *args[1:]]))
        except redis.RedisError as exc:
            raise BrokerError(f"Redis beat store: {args[0]} failed: {exc}") from exc

    # -- lease ------------------------------------------------------------------------------
    def acquire(self, holder: str, ttl: float) -> bool:
        return self._call("acquire", holder, max(1, int(ttl * 1000))) == 1

    def renew(self, holder: str, ttl: float) -> bool:
        return self._call("renew", holder, max(1, int(ttl * 1000))) == 1

    def release(self, holder: str) -> None:
        self._call("release", holder)

    def leader(self) -> Lease | None:
        try:
            with self.client.pipeline(transaction=True) as pipe:
                pipe.get(self._key("lease"))
                pipe.pttl(self._key("lease"))
                holder, pttl = pipe.execute()
        except redis.RedisError as exc:
            raise BrokerError(f"Redis beat store: leader failed: {exc}") from exc
        if holder is None or pttl is None or pttl < 0:
            return None
        return Lease(_text(holder), time.time() + pttl / 1000)

    # -- ticks ------------------------------------------------------------------------------
    def claim_tick(
        self, holder: str, entry: str, tick: float, previous: float | None, *, unsent: bool = False
    ) -> bool:
        return self._call("claim", holder, entry, _num(tick), _num(previous), int(unsent)) == 1

    def claim_and_store(
        self,
        holder: str,
        entry: str,
        tick: float,
        previous: float | None,
        publishes: list[list[str]],
        sent_at: float,
    ) -> bool:
        """:meth:`claim_tick` and run the broker's ``publish`` with each of ``publishes``
        (:meth:`RedisBroker.script_publishes`), and record ``sent_at`` as the entry's last
        send, in one script call: all or nothing."""
        flat = [arg for call in publishes for arg in call]
        args = (_num(tick), _num(previous), _num(sent_at))
        return self._call("send", holder, entry, *args, *flat) == 1

    def settle_tick(self, entry: str, tick: float, *, sent_at: float | None = None) -> None:
        self._call("settle", entry, _num(tick), _num(sent_at))

    def states(self) -> dict[str, EntryState]:
        try:
            with self.client.pipeline(transaction=True) as pipe:
                pipe.hgetall(self._key("ticks"))
                pipe.smembers(self._key("paused"))
                pipe.hkeys(self._key("unsent"))
                pipe.hgetall(self._key("sent"))
                ticks, paused, unsent, sent = pipe.execute()
        except redis.RedisError as exc:
            raise BrokerError(f"Redis beat store: states failed: {exc}") from exc
        last = {_text(k): float(v) for k, v in ticks.items()}
        stopped = {_text(n) for n in paused}
        waiting = {_text(n) for n in unsent}
        sends = {_text(k): float(v) for k, v in sent.items()}
        return {
            n: EntryState(last.get(n), n in stopped, n in waiting, sends.get(n))
            for n in set(last) | stopped
        }

    # -- dynamic entries --------------------------------------------------------------------
    def put_entry(self, name: str, spec: dict[str, Any], *, replace: bool) -> bool:
        doc = json.dumps(spec, separators=(",", ":"))
        return self._call("put", name, doc, int(replace)) == 1

    def remove_entry(self, name: str) -> bool:
        return self._call("remove", name) == 1

    def set_paused(self, name: str, paused: bool) -> None:
        self._call("pause", name, int(paused))

    def entries(self) -> dict[str, dict[str, Any]]:
        try:
            # redis-py's sync client is typed as possibly async: its answers are cast.
            raw = cast(dict[bytes, bytes], self.client.hgetall(self._key("entries")))
        except redis.RedisError as exc:
            raise BrokerError(f"Redis beat store: entries failed: {exc}") from exc
        return {_text(k): json.loads(v) for k, v in raw.items()}

    def version(self) -> int:
        try:
            value = cast(bytes | None, self.client.get(self._key("version")))
        except redis.RedisError as exc:
            raise BrokerError(f"Redis beat store: version failed: {exc}") from exc
        return int(value) if value is not None else 0


class RedisTickSender(TickSender):
    """Claims a tick and stores its message in one script call (a broadcast, which Redis does
    not store, takes the three steps)."""

    broker: RedisBroker
    store: RedisBeatStore

    def claim_and_send(
        self, holder: str, entry: str, tick: float, previous: float | None, publication: Publication
    ) -> bool:
        publishes = self.broker.script_publishes(publication)
        if publishes is None:
            return super().claim_and_send(holder, entry, tick, previous, publication)
        return self.store.claim_and_store(holder, entry, tick, previous, publishes, self.clock())
