"""HeldConnections (transports/redis/held.py): a thread's commands go over one connection it keeps.

Connections are told apart by the server's ``CLIENT ID``.
"""

from __future__ import annotations

import gc
import os
import subprocess
import sys
import textwrap
import threading
import time
import weakref
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import pytest
import redis

from celeriac import Celeriac
from celeriac.transports.redis.connection import connect
from celeriac.transports.redis.held import HeldConnections
from tests.redis_support import base_url, drop, new_prefix, url_with_prefix

pytestmark = pytest.mark.redis
T = TypeVar("T")


def _in_thread(call: Callable[[], T]) -> T:
    """What ``call`` returns, run on a thread of its own that has ended since."""
    out: list[T] = []
    t = threading.Thread(target=lambda: out.append(call()))
    t.start()
    t.join(10)
    assert not t.is_alive()
    return out[0]


def _client_id_in_thread(held: HeldConnections) -> int:
    return _in_thread(lambda: int(held.get().client_id()))


def test_a_thread_keeps_one_connection_and_another_thread_has_its_own(
    held: HeldConnections,
) -> None:
    mine = held.get()
    first = mine.client_id()
    assert [held.get().client_id() for _ in range(5)] == [first] * 5
    assert held.get() is mine
    other = _client_id_in_thread(held)
    assert other != first
    assert held.get().client_id() == first


def test_a_thread_that_ends_gives_its_connection_back_to_the_pool(held: HeldConnections) -> None:
    theirs = _client_id_in_thread(held)
    # The ended thread's client was dropped with its thread-local data: the pool lends its
    # connection to the next taker instead of opening one.
    assert held.get().client_id() == theirs


def test_a_connection_the_server_closed_is_opened_again_on_the_next_command(
    held: HeldConnections,
) -> None:
    first = held.get().client_id()
    killer = redis.Redis.from_url(base_url())
    try:
        assert killer.client_kill_filter(_id=str(first)) == 1
    finally:
        killer.close()
    again = held.get().client_id()  # retried on a new connection, as from the pool
    assert again != first
    assert held.get().client_id() == again


def test_a_forked_child_opens_its_own_and_leaves_the_parents_alone(
    held: HeldConnections,
) -> None:
    parent = held.get().client_id()
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: report its connection's id, and exit without cleanup
        code = 1
        try:
            os.write(write, str(held.get().client_id()).encode())
            code = 0
        finally:
            os._exit(code)
    os.close(write)
    with os.fdopen(read) as f:
        child = int(f.read() or 0)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert child not in (0, parent)
    assert held.get().client_id() == parent  # still open: the child closed nothing of ours


def test_a_command_cut_short_between_send_and_read_leaves_nothing_for_the_next(
    held: HeldConnections, monkeypatch: pytest.MonkeyPatch
) -> None:
    key = f"{new_prefix()}k"
    with held.command() as client:
        client.set(key, "the first command's reply", ex=60)
        first = client.client_id()
    read = redis.Redis.parse_response

    def interrupted(self: redis.Redis, *args: Any, **kwargs: Any) -> Any:
        # As a soft time limit (an asynchronous exception) landing after the send
        monkeypatch.setattr(redis.Redis, "parse_response", read)
        raise KeyboardInterrupt

    monkeypatch.setattr(redis.Redis, "parse_response", interrupted)
    with pytest.raises(KeyboardInterrupt), held.command() as client:
        client.get(key)
    with held.command() as client:
        assert client.echo("mine") == b"mine"  # not the GET's reply, left unread
        assert client.client_id() != first  # on a new connection
        client.delete(key)


def test_an_error_reply_keeps_the_connection(held: HeldConnections) -> None:
    key = f"{new_prefix()}list"
    with held.command() as client:
        first = client.client_id()
        client.rpush(key, "x")
    with pytest.raises(redis.ResponseError), held.command() as client:
        client.get(key)  # WRONGTYPE: a reply, read whole
    with held.command() as client:
        assert client.client_id() == first
        client.delete(key)


def _last_command(name: str) -> str:
    watcher = redis.Redis.from_url(base_url())
    try:
        [entry] = [c for c in watcher.client_list() if c.get("name") == name]
        return str(entry["cmd"])
    finally:
        watcher.close()


def test_publish_fetch_and_result_reads_go_over_the_callers_connection() -> None:
    prefix = new_prefix()
    url = url_with_prefix(prefix)
    app = Celeriac("held", broker_url=url, result_backend=url)

    @app.task
    def add(x: int, y: int) -> int:
        return x + y

    name = f"held-{prefix.rstrip(':')}"
    try:
        broker, backend = app.broker, app.backend
        conns = broker._conns  # type: ignore[attr-defined]
        assert backend._conns is conns  # type: ignore[attr-defined]  # one client: one each

        def last_command_of(action: Callable[[], object]) -> str:
            conns.get().client_setname(name)
            action()
            # A command through the pool never takes the connection this thread holds.
            broker.client.exists(f"{prefix}nothing")  # type: ignore[attr-defined]
            return _last_command(name)

        result: list[Any] = []
        assert last_command_of(lambda: result.append(add.delay(1, 2))) == "evalsha"
        got: list[Any] = []
        assert (
            last_command_of(lambda: got.extend(broker.fetch(["celery"], 10, timeout=1.0)))
            == "evalsha"
        )
        assert [d.message.task_id for d in got] == [result[0].id]
        assert last_command_of(lambda: broker.ack(got)) == "evalsha"
        # nothing there: it waits on its wake list, then looks once more
        assert last_command_of(lambda: broker.fetch(["celery"], 10, timeout=0.3)) in (
            "brpop",
            "evalsha",
        )
        assert last_command_of(lambda: result[0].state) == "get"  # a result read
    finally:
        app.close()
        drop(prefix)


def test_at_most_half_the_pools_connections_are_held() -> None:
    client = redis.Redis.from_url(base_url(), max_connections=4)
    conns = HeldConnections(client)
    release = threading.Event()
    got: list[redis.Redis] = []
    lock = threading.Lock()

    def hold() -> None:
        c = conns.get()
        c.ping()
        with lock:
            got.append(c)
        release.wait(10)

    threads = [threading.Thread(target=hold) for _ in range(3)]
    try:
        for t in threads:
            t.start()
        deadline = time.monotonic() + 10
        while len(got) < 3 and time.monotonic() < deadline:
            time.sleep(0.01)
        # two hold one each; the third takes turns on the pool (the shared client)
        assert sorted(c is client for c in got) == [False, False, True]
        assert conns.get() is client  # so does this thread, the cap being reached
    finally:
        release.set()
        for t in threads:
            t.join(10)
    got.clear()
    try:
        assert _in_thread(conns.get) is not client  # so a new thread holds one again
        assert conns.get() is not client  # and so does this one, over the cap a moment ago
    finally:
        client.close()


def test_a_command_entered_during_one_of_its_threads_own_runs_on_the_pool(
    held: HeldConnections,
) -> None:
    # As from a signal handler or a finalizer that runs mid-command: two commands on one
    # socket would read each other's replies.
    with held.command() as outer:
        assert outer is held.get()
        with held.command() as inner:
            assert inner is held.shared
            assert inner.echo("inner") == b"inner"
        assert outer.echo("outer") == b"outer"
    with held.command() as again:
        assert again is held.get()


def test_connections_held_for_a_dropped_client_are_freed_with_it() -> None:
    target = connect(base_url())
    conns = HeldConnections(target.client)
    client = weakref.ref(conns.get())
    assert client() is not None
    del conns
    gc.collect()
    # nothing (a finalizer) keeps it, its thread-local clients or their pool alive
    assert client() is None
    target.client.close()


def test_a_fork_while_another_thread_holds_the_count_lock_does_not_hang_the_child(
    held: HeldConnections,
) -> None:
    # Another thread's held client is freed in the child as the fork happens; giving its
    # place back must not wait for a lock a parent's thread (not the forking one) held.
    holding, locked, done = threading.Event(), threading.Event(), threading.Event()

    def holder() -> None:
        held.get().ping()
        holding.set()
        done.wait(10)

    def locker() -> None:
        with held._count.lock:
            locked.set()
            done.wait(10)

    others = [threading.Thread(target=holder), threading.Thread(target=locker)]
    for t in others:
        t.start()
    try:
        assert holding.wait(10) and locked.wait(10)
        pid = os.fork()
        if pid == 0:
            code = 1
            try:
                with held.command() as client:
                    client.ping()
                code = 0
            finally:
                os._exit(code)
    finally:
        done.set()
        for t in others:
            t.join(10)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        ended, status = os.waitpid(pid, os.WNOHANG)
        if ended:
            assert os.waitstatus_to_exitcode(status) == 0
            return
        time.sleep(0.05)
    os.kill(pid, 9)
    os.waitpid(pid, 0)
    pytest.fail("the forked child hung")


def test_a_command_whose_exit_never_ran_leaves_the_thread_on_a_fresh_connection(
    held: HeldConnections,
) -> None:
    first = held.get().client_id()
    cmd = held.command()
    cmd.__enter__()
    del cmd  # its __exit__ never ran (an exception raised as it began): its reply may be unread
    with held.command() as client:
        assert client is held.get()  # still the thread's own: not left on the pool for good
        assert client.client_id() != first  # but on a new connection


def test_a_failed_command_drops_its_connection_before_the_thread_can_take_it_again(
    held: HeldConnections, monkeypatch: pytest.MonkeyPatch
) -> None:
    client = held.get()
    client.ping()
    conn = client.connection
    assert conn is not None
    drop = conn.disconnect
    seen: list[bool] = []

    def interrupted(*args: Any, **kwargs: Any) -> Any:
        # As a signal handler running just before the drop: it must not get this connection
        with held.command() as inner:
            seen.append(inner is held.shared)
        return drop(*args, **kwargs)

    monkeypatch.setattr(conn, "disconnect", interrupted)
    with pytest.raises(KeyboardInterrupt), held.command():
        raise KeyboardInterrupt
    assert seen == [True]


def test_a_thread_that_ends_gives_its_connection_back_though_its_client_lives_on(
    held: HeldConnections,
) -> None:
    def use() -> redis.Redis:
        client = held.get()
        client.ping()
        return client

    kept = _in_thread(use)
    # Not left to the client's __del__ (a reference cycle, or this reference, can put it off)
    assert kept.connection is None
    assert held._count.n == 0


def test_at_exit_a_daemon_threads_connection_mid_command_is_not_lent_to_anyone(
    tmp_path: Path,
) -> None:
    prefix = new_prefix()
    script = textwrap.dedent(
        f"""
        import atexit, threading, time
        from celeriac.transports.redis.connection import connect

        t = connect({base_url()!r})
        key, wake = {prefix + "v"!r}, {prefix + "wake"!r}
        t.client.set(key, "the value", ex=60)
        # registered first, so it runs after the finalizers' exit hook
        atexit.register(lambda: print(repr(t.client.get(key)), flush=True))
        started = threading.Event()

        def worker():
            while True:
                with t.conns.command() as c:
                    started.set()
                    c.brpop([wake], timeout=1)  # waiting on its held connection at exit

        threading.Thread(target=worker, daemon=True).start()
        started.wait(10)
        time.sleep(0.2)
        """
    )
    try:
        out = subprocess.run(
            [sys.executable, "-c", script], capture_output=True, text=True, timeout=60
        )
        assert out.returncode == 0, out.stderr
        assert out.stdout.strip() == "b'the value'"  # not the BRPOP's reply
    finally:
        drop(prefix)
