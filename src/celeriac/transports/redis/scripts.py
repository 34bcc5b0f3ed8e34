"""The Lua scripts, read from this package's files."""

from __future__ import annotations

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


def evalsha(client: redis.Redis, script: Script, args: list[str | int]) -> Any:
    """One call of ``script`` by its SHA (redis-py's ``Script.__call__`` costs ~10 us more per
    call, measured: isinstance checks against its pipeline classes), loaded first when Redis
    has lost it (a restart, ``SCRIPT FLUSH``)."""
    try:
        return client.evalsha(script.sha, 0, *args)
    except NoScriptError:
        client.script_load(script.script)
        return client.evalsha(script.sha, 0, *args)


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
