"""The Lua scripts, read from this package's files."""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from importlib import resources
from typing import Any

import redis
from redis.commands.core import Script
from redis.exceptions import NoScriptError


def lua(*names: str) -> str:
    """The named ``.lua`` files of this package, in order, as one script (``store_results.lua``
    goes first in scripts that store results as they work)."""
    folder = resources.files("celeriac.transports.redis")
    return "\n".join(folder.joinpath(name).read_text() for name in names)


_NO_LOCK = contextlib.nullcontext()


def execute(client: redis.Redis, *args: Any) -> Any:
    """``client.execute_command(*args)`` for a command whose reply redis-py does not convert
    (``EVALSHA``, ``GET``, ``MGET``), sent straight on the connection of a client that holds
    one (:mod:`.held`'s). What redis-py adds around each command is not wanted on the hot
    paths (its metrics hooks, a closure and a retry counter per call): ~24 us of a
    ``delay()``'s ~175 us of CPU here (measured, one process, alternating). Kept: the client's
    lock, the connection's retry policy (a :class:`.deadline.DeadlineRetry`), a disconnect
    after each failed attempt, as redis-py does, and a reconnect when a server's maintenance
    notice asks for one. A client on the pool goes through redis-py as before. Not kept:
    redis-py's own metrics and debug logs of these commands."""
    conn: Any = client.connection  # redis-py's connection methods are untyped
    if conn is None:
        return client.execute_command(*args)  # type: ignore[no-untyped-call]

    def attempt() -> Any:
        conn.send_command(*args)
        return conn.read_response()

    # The client's own lock, which redis-py also takes to re-authenticate on this connection
    # from a credential provider's thread.
    with getattr(client, "single_connection_lock", _NO_LOCK):
        try:
            return conn.retry.call_with_retry(attempt, lambda _error: conn.disconnect())
        finally:
            should_reconnect = getattr(conn, "should_reconnect", None)  # redis-py >= 6.2
            if should_reconnect is not None and should_reconnect():
                conn.disconnect()
                conn.connect()


def evalsha(
    client: redis.Redis, script: Script, args: list[str | int], keys: Sequence[str] = ()
) -> Any:
    """One call of ``script`` by its SHA (redis-py's ``Script.__call__`` costs ~10 us more per
    call, measured: isinstance checks against its pipeline classes), loaded first when Redis
    has lost it (a restart, ``SCRIPT FLUSH``). Sent by :func:`execute`."""
    try:
        return execute(client, "EVALSHA", script.sha, len(keys), *keys, *args)
    except NoScriptError:
        client.script_load(script.script)
        return execute(client, "EVALSHA", script.sha, len(keys), *keys, *args)


def evalsha_pipelined(client: redis.Redis, script: Script, calls: list[list[str | int]]) -> None:
    """Run ``script`` once per argument list, in one round trip.

    By its SHA, as redis-py's ``Script`` would not in a pipeline: there it asks Redis whether
    the script is loaded (``SCRIPT EXISTS``) first, a round trip per pipeline. When Redis has
    lost it (a restart, ``SCRIPT FLUSH``), every call failed with NOSCRIPT and changed nothing:
    load it and run those again.
    """
    for attempt in (1, 2):
        with client.pipeline(transaction=False) as pipe:
            for args in calls:
                pipe.evalsha(script.sha, 0, *args)
            results = pipe.execute(raise_on_error=False)
        for r in results:
            if isinstance(r, Exception) and not isinstance(r, NoScriptError):
                raise r
        calls = [a for a, r in zip(calls, results, strict=True) if isinstance(r, NoScriptError)]
        if not calls:
            return
        if attempt == 2:
            raise NoScriptError("the script was lost again as soon as it was loaded")
        client.script_load(script.script)
