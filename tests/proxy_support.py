"""A TCP proxy in front of a test's server, to cut connections or swallow their traffic.

Faults go through the proxy, never the (possibly shared) server itself.
"""

from __future__ import annotations

import contextlib
import select
import socket
import threading


class Proxy:
    """Forwards ``127.0.0.1:<port>`` to ``target``.

    :meth:`cut` severs every open connection; while :attr:`blackhole` is set the server looks
    partitioned away: connections are still accepted (by the proxy), but nothing sent either way
    arrives, and nobody is told.
    """

    def __init__(self, target: tuple[str, int]) -> None:
        self.target = target
        self.server = socket.create_server(("127.0.0.1", 0))
        self.port: int = self.server.getsockname()[1]
        self._lock = threading.Lock()
        self._conns: list[socket.socket] = []
        self._closed = False
        #: while True, whatever either side sends is dropped, and new connections are held open
        #: without reaching the target
        self.blackhole = False
        threading.Thread(target=self._accept, daemon=True, name="proxy-accept").start()

    def url(self, scheme: str = "redis", path: str = "/0") -> str:
        return f"{scheme}://127.0.0.1:{self.port}{path}"

    def _accept(self) -> None:
        while not self._closed:
            try:
                client, _ = self.server.accept()
            except OSError:
                return
            if self.blackhole:
                with self._lock:
                    self._conns.append(client)  # held, never read: the SYN-ACK came from us
                continue
            try:
                upstream = socket.create_connection(self.target, timeout=5)
            except OSError:
                client.close()
                continue
            with self._lock:
                self._conns += [client, upstream]
            threading.Thread(target=self._pump, args=(client, upstream), daemon=True).start()

    def _pump(self, a: socket.socket, b: socket.socket) -> None:
        peers = {a: b, b: a}
        try:
            while True:
                ready, _, _ = select.select([a, b], [], [], 1.0)
                for src in ready:
                    data = src.recv(65536)
                    if not data:
                        return
                    if not self.blackhole:
                        peers[src].sendall(data)
        except (OSError, ValueError):  # ValueError: cut() closed a socket select() was given
            return
        finally:
            for s in (a, b):
                with contextlib.suppress(OSError):
                    s.close()

    def cut(self) -> None:
        """Sever every connection going through the proxy now (new ones are let through)."""
        with self._lock:
            conns, self._conns = self._conns, []
        for s in conns:
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)
            with contextlib.suppress(OSError):
                s.close()

    def close(self) -> None:
        self._closed = True
        self.server.close()
        self.cut()
