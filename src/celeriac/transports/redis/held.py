"""A Redis connection per thread for the hot paths, kept in step with its replies.

redis-py takes a connection from its pool for every command and gives it back after; this
module keeps one per thread instead (:class:`HeldConnections`), for the commands a publish, a
worker's fetch and a result read make.
"""

from __future__ import annotations

import os
import threading
import weakref

import redis

#: Connections held per pool at most (and at most half its ``max_connections``).
HELD_MAX = 32


class HeldConnections:
    """A client per thread over ``client``'s pool, each keeping one connection between its
    thread's commands.

    redis-py takes a connection from the pool for each command and gives it back after: a
    lock, a pid check and a ``poll()`` (is anything unread on it?) every time, ~8-12 us of CPU
    a command here (``delay()``: 139.7 against 149.0 us of CPU, this against the pool). The hot
    paths (a publish, a worker's fetch, ack and wait, a result read) run on the calling
    thread's client instead; pipelines and pub/sub keep using the pool. A thread keeps its
    connection until it ends, when it goes back to the pool. At most :data:`HELD_MAX`, and
    half the pool's ``max_connections``, are held: past that a thread takes turns on the pool
    as before, so threads that hold one never starve it. A connection redis-py drops after an
    error is opened again on the next command, as from the pool; a forked child makes its own.
    """

    __slots__ = ("_count", "_local", "shared")

    def __init__(self, client: redis.Redis) -> None:
        self.shared = client
        self._local = threading.local()
        self._count = _Count()

    def command(self) -> HeldCommand:
        """``with conns.command() as client:`` one command (or a few, one after the other) on
        this thread's client. It connects on first use: enter it where a Redis error is
        handled, within the caller's deadline.

        Entered again on a thread while a command of its own runs (from a signal handler, a
        finalizer), it runs on a connection the pool lends: two commands on one socket would
        read each other's replies."""
        client = self.get()
        if client is self.shared:
            return HeldCommand(client, None)
        local = self._local
        busy = local.busy
        if busy is not None:
            if busy() is not None:  # a command of this thread's runs further up its stack
                return HeldCommand(self.shared, None)
            # A command whose end was never seen (an exception at the very start of its
            # __exit__): its reply may be unread.
            _drop(client)
        return HeldCommand(client, local)

    def get(self) -> redis.Redis:
        """This thread's client, or the shared one while :data:`HELD_MAX` are held (outside a
        :meth:`command`: for tests and inspection)."""
        local = self._local
        pid = os.getpid()
        lease: _Lease | None = getattr(local, "lease", None)
        if lease is not None and lease.pid == pid:
            return lease.client
        # None yet, or one inherited through fork: that one is dropped (redis-py gives nothing
        # back to a pool of another process, and closes no socket it did not open).
        local.lease, local.busy = None, None
        lease = self._take(pid)
        if lease is None:
            return self.shared  # asked again next time: a place may have come free
        local.lease = lease
        return lease.client

    def _take(self, pid: int) -> _Lease | None:
        pool = self.shared.connection_pool
        cap = min(HELD_MAX, getattr(pool, "max_connections", HELD_MAX * 2) // 2)
        count = self._count
        if not count.take(cap):
            return None
        ending = None
        try:
            client = redis.Redis(connection_pool=pool, single_connection_client=True)
            lease = _Lease(client, pid)
            # When the thread's lease goes (the thread ended, or this object was dropped), its
            # connection goes back to the pool and its place to the count. Not left to the
            # client's own __del__, which a reference cycle can put off (redis-py 5.0 makes
            # one when a server refuses CLIENT SETINFO); given the count only, not self, which
            # would stay alive, with every thread's client, as long as the process.
            ending = weakref.finalize(lease, _end_lease, client, count, pid)
            # Not at exit: a daemon thread may be mid-command then (a worker's BRPOP), and its
            # connection, back in the pool, would be lent to an exit handler, which would read
            # the BRPOP's reply. The process's sockets close with it.
            ending.atexit = False
        except BaseException:
            if ending is None:  # an asynchronous exception can land on any line
                count.give_back(pid)
            raise
        return lease


class _Lease:
    """One thread's client, while the thread keeps it."""

    __slots__ = ("__weakref__", "client", "pid")

    def __init__(self, client: redis.Redis, pid: int) -> None:
        self.client, self.pid = client, pid


def _end_lease(client: redis.Redis, count: _Count, pid: int) -> None:
    if pid == os.getpid():
        client.close()  # its connection back to the pool
    count.give_back(pid)


def _drop(client: redis.Redis) -> None:
    conn = client.connection
    if conn is not None:
        conn.disconnect()  # type: ignore[no-untyped-call]


class _Count:
    """How many clients one :class:`HeldConnections`' threads hold in this process."""

    __slots__ = ("__weakref__", "lock", "n", "pid")

    def __init__(self) -> None:
        self.reset()
        _COUNTS.add(self)
        _reset_at_fork()

    def reset(self) -> None:
        # reentrant: a finalizer (give_back) may run in a collection on a thread holding it
        self.lock, self.n, self.pid = threading.RLock(), 0, os.getpid()

    def take(self, cap: int) -> bool:
        with self.lock:
            if self.n >= cap:
                return False
            self.n += 1
            return True

    def give_back(self, pid: int) -> None:
        # A client taken before a fork, freed in the child (its other threads' clients are,
        # as the fork happens): not this process's, and the lock may be one a parent's
        # thread held at the fork; reset() gives the child its own.
        if pid != self.pid or pid != os.getpid():
            return
        with self.lock:
            self.n -= 1


_COUNTS: weakref.WeakSet[_Count] = weakref.WeakSet()
_FORK_HOOK: list[bool] = []


def _reset_at_fork() -> None:
    """Once per process, on first use (not at import): a child starts every count afresh."""
    if not _FORK_HOOK:
        _FORK_HOOK.append(True)
        os.register_at_fork(after_in_child=_after_fork)


def _after_fork() -> None:
    for count in list(_COUNTS):
        count.reset()


class HeldCommand:
    """A command on a held connection; see :meth:`HeldConnections.command`.

    A connection lent by the pool is checked for unread data when it is lent; a held one is
    not. redis-py drops a connection when a send or a read fails, but an exception raised
    between the two (a soft time limit or another asynchronous exception in a task's thread,
    a signal handler's) would leave the reply unread, and the thread's next command would
    read it as its own. So a command that ends in anything but a reply Redis sent (an error
    reply included) drops the connection: the next one opens another.
    """

    __slots__ = ("__weakref__", "_local", "client")

    def __init__(self, client: redis.Redis, local: threading.local | None) -> None:
        self.client = client
        self._local = local  # None: a command on the pool, nothing to keep in step

    def __enter__(self) -> redis.Redis:
        if self._local is not None:
            # A reference to this command, alive while it runs: a command entered under it
            # (a signal handler's) sees one running; one left over from a command whose
            # __exit__ never ran is dead, and says its reply may be unread.
            self._local.busy = weakref.ref(self)
        return self.client

    def __exit__(self, kind: type[BaseException] | None, *rest: object) -> None:
        local = self._local
        if local is None:
            return
        try:
            if kind is not None and not issubclass(kind, redis.ResponseError):
                _drop(self.client)
        finally:
            # Only now: a handler running before the drop must not take this connection.
            local.busy = None
