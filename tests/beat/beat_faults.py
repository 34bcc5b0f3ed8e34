"""Faults injected into a real beat process (``BEAT_TEST_FAULT``), where its message is written.

They sit below Celeriac, on the client libraries, so they hit whatever path beat takes to store a
tick's message: the broker's publish, or a transport's step that records the tick and stores its
message together. Each fires once per test (the first process to create ``BEAT_TEST_FAULT_MARK``
fires it and writes ``"<pid> <tick>"`` there); beats started later on see the mark and run clean.

* ``stall-in-send``: a message write starts, then stalls for a minute so the test can kill the
  process inside the send (SQLite: inside the transaction, after anything it did before the
  message's INSERT; Redis: just before the script call that stores the message).
* ``raise-after-send``: a message write goes through, then the caller gets an error as if the
  reply were lost (SQLite: after COMMIT; Redis: after the script ran).

``BEAT_TEST_GENERIC=1`` makes beat take the three-step path any store and broker allow (record
the tick as unsent, publish, mark it sent) instead of its transport's atomic one.
"""

from __future__ import annotations

import json
import os
import re
import sqlite3
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

_TICK = re.compile(r'"beat_tick":\s*([0-9.eE+-]+)')


def _fire(tick: float | None) -> bool:
    """True for the one process and moment that fires the fault; records the tick it hit."""
    if tick is None:
        return False
    try:
        fd = os.open(os.environ["BEAT_TEST_FAULT_MARK"], os.O_CREAT | os.O_EXCL | os.O_WRONLY)
    except FileExistsError:
        return False
    with os.fdopen(fd, "w") as f:
        f.write(f"{os.getpid()} {tick!r}\n")
    return True


def _stall() -> None:
    time.sleep(60)  # the test kills us in here


# -- SQLite: a trace callback sees each statement as it starts, with its values --------------
_inserted: list[float] = []


def _trace(statement: str) -> None:
    if not statement.startswith("INSERT INTO celeriac_messages"):
        return
    match = _TICK.search(statement)
    tick = float(match.group(1)) if match else None
    if os.environ["BEAT_TEST_FAULT"] == "stall-in-send":
        if _fire(tick):
            _stall()
    elif tick is not None:
        _inserted.append(tick)


def _install_sqlite(fault: str) -> None:
    from celeriac.exceptions import BrokerError
    from celeriac.transports.sqlite.connection import SQLiteFile

    real_connect = sqlite3.connect

    def connect(*args: Any, **kwargs: Any) -> sqlite3.Connection:
        conn = real_connect(*args, **kwargs)
        conn.set_trace_callback(_trace)
        return conn

    sqlite3.connect = connect  # type: ignore[assignment]
    if fault != "raise-after-send":
        return
    real_write = SQLiteFile.write

    @contextmanager
    def write(self: SQLiteFile) -> Iterator[sqlite3.Connection]:
        _inserted.clear()
        with real_write(self) as conn:
            yield conn
        # Committed. Now fail as if the answer had been lost on the way back.
        if _inserted and _fire(_inserted[0]):
            raise BrokerError(f"SQLite {self.path}: disk I/O error (test fault, after COMMIT)")

    SQLiteFile.write = write  # type: ignore[method-assign]


# -- Redis: every broker and beat-store command is a call of a Lua script, by its SHA ---------
def _envelope_tick(args: list[Any]) -> float | None:
    for arg in args:
        if isinstance(arg, str) and arg.startswith('{"body"'):
            tick = json.loads(arg).get("headers", {}).get("beat_tick")
            return float(tick) if tick is not None else None
    return None


def _install_redis(fault: str) -> None:
    import redis
    from redis.commands.core import ScriptCommands
    from redis.connection import AbstractConnection

    if fault == "stall-in-send":
        # On the connection: a command is sent here whether it goes through redis-py's
        # client (a Script call) or straight on a held connection (scripts.execute).
        real_send = AbstractConnection.send_command

        def send_command(self: Any, *args: Any, **kwargs: Any) -> None:
            if args and str(args[0]).upper() == "EVALSHA" and _fire(_envelope_tick(list(args))):
                _stall()
            real_send(self, *args, **kwargs)

        AbstractConnection.send_command = send_command  # type: ignore[method-assign]
        return

    # A reply lost once the script ran: raised where redis-py's client hands the reply back
    # (the beat store's script call comes through here), past its retries.
    real_evalsha = ScriptCommands.evalsha

    def evalsha(self: Any, sha: str, numkeys: int, *keys_and_args: Any) -> Any:
        tick = _envelope_tick(list(keys_and_args))
        result = real_evalsha(self, sha, numkeys, *keys_and_args)
        if result == 1 and _fire(tick):
            raise redis.ConnectionError("Connection closed by server (test fault, after the call)")
        return result

    ScriptCommands.evalsha = evalsha  # type: ignore[method-assign]


def _install_generic() -> None:
    from celeriac.beat import scheduler
    from celeriac.beat.store import TickSender

    def three_steps(broker: Any, store: Any) -> TickSender:
        return TickSender(broker, store)

    scheduler.tick_sender = three_steps  # type: ignore[assignment]


def install() -> None:
    fault = os.environ["BEAT_TEST_FAULT"]
    assert fault in ("stall-in-send", "raise-after-send"), fault
    url = os.environ["CELERIAC_BROKER_URL"]
    if url.startswith("sqlite"):
        _install_sqlite(fault)
    else:
        _install_redis(fault)
    if os.environ.get("BEAT_TEST_GENERIC") == "1":
        _install_generic()
