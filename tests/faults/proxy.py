"""A TCP proxy a test controls: it cuts, delays or blackholes traffic to a broker (any TCP
server: Redis, RabbitMQ), with no iptables or tc.

* :meth:`FaultProxy.cut` severs every open connection at once (both sides see a reset);
* :attr:`FaultProxy.refusing` closes new connections as they come (the server looks down);
* :attr:`FaultProxy.delay` holds every chunk that long before passing it on (a slow link);
* :meth:`FaultProxy.silence` makes the connections open now drop everything, both ways, and
  hide a close: a half-open connection (a NAT or firewall that forgot the flow). New
  connections go through;
* :attr:`FaultProxy.blackhole` does that to every connection, new ones included (a partition);
  :meth:`FaultProxy.heal` ends it, and severs the connections that lost traffic meanwhile
  (their byte streams have holes);
* :meth:`FaultProxy.retarget` sends new connections elsewhere (a failover).

A task in a worker can ask for a fault at an exact point of its own run through the control
port (:attr:`FaultProxy.control_port`, a line ``silence``/``cut``/``blackhole``/``heal``, answered
``ok`` once done): the fault is in place before the task returns.
"""

from __future__ import annotations

import contextlib
import queue
import socket
import threading
import time


class _Link:
    """One proxied connection: two sockets, a pump thread per direction."""

    def __init__(self, proxy: FaultProxy, client: socket.socket, upstream: socket.socket) -> None:
        self.proxy = proxy
        self.sockets = (client, upstream)
        self.silent = False
        self.closed = False
        for src, dst in ((client, upstream), (upstream, client)):
            out: queue.SimpleQueue[tuple[float, bytes] | None] = queue.SimpleQueue()
            threading.Thread(target=self._read, args=(src, out), daemon=True).start()
            threading.Thread(target=self._write, args=(dst, out), daemon=True).start()

    def _quiet(self) -> bool:
        return self.silent or self.proxy.blackhole

    def _read(self, src: socket.socket, out: queue.SimpleQueue[tuple[float, bytes] | None]) -> None:
        while not self.closed:
            try:
                data = src.recv(65536)
            except OSError:
                data = b""
            if not data:
                if self._quiet() and not self.closed:  # a half-open peer hears of no close
                    while self._quiet() and not self.closed:
                        time.sleep(0.05)
                self.close()
                out.put(None)
                return
            if self._quiet():
                self.silent = True  # the stream now has a hole: it cannot be healed
                continue
            out.put((time.monotonic() + self.proxy.delay, data))

    def _write(
        self, dst: socket.socket, out: queue.SimpleQueue[tuple[float, bytes] | None]
    ) -> None:
        while True:
            item = out.get()
            if item is None:
                return
            due, data = item
            pause = due - time.monotonic()
            if pause > 0:
                time.sleep(pause)
            if self._quiet():
                continue
            try:
                dst.sendall(data)
            except OSError:
                self.close()
                return

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        for s in self.sockets:
            with contextlib.suppress(OSError):
                s.setsockopt(
                    socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00"
                )
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)
            with contextlib.suppress(OSError):
                s.close()


class FaultProxy:
    """Forwards 127.0.0.1:``port`` to ``target_port`` (see the module docstring)."""

    def __init__(self, target_port: int, host: str = "127.0.0.1") -> None:
        self.target = (host, target_port)
        self.server = socket.create_server(("127.0.0.1", 0))
        self.port: int = self.server.getsockname()[1]
        self.refusing = False
        self.blackhole = False
        self.delay = 0.0
        self.cuts = 0
        self.accepted = 0
        self._links: list[_Link] = []
        self._lock = threading.Lock()
        self._closed = False
        threading.Thread(target=self._accept, daemon=True, name="fault-proxy").start()
        self.control = socket.create_server(("127.0.0.1", 0))
        self.control_port: int = self.control.getsockname()[1]
        threading.Thread(target=self._serve_control, daemon=True, name="fault-control").start()

    def _serve_control(self) -> None:
        while not self._closed:
            try:
                conn, _ = self.control.accept()
            except OSError:
                return
            with conn:
                command = conn.makefile("r").readline().strip()
                if command == "blackhole":
                    self.blackhole = True
                elif command in ("silence", "cut", "heal"):
                    getattr(self, command)()
                conn.sendall(b"ok\n")

    def _accept(self) -> None:
        while not self._closed:
            try:
                client, _ = self.server.accept()
            except OSError:
                return
            if self.refusing:
                client.close()
                continue
            try:
                upstream = socket.create_connection(self.target, timeout=5)
                upstream.settimeout(None)
            except OSError:
                client.close()
                continue
            with self._lock:
                self.accepted += 1
                self._links = [link for link in self._links if not link.closed]
                self._links.append(_Link(self, client, upstream))

    def links(self) -> list[_Link]:
        with self._lock:
            return [link for link in self._links if not link.closed]

    def cut(self) -> int:
        """Sever every open connection now; returns how many."""
        links = self.links()
        for link in links:
            link.close()
        self.cuts += 1
        return len(links)

    def silence(self) -> int:
        """Make every open connection half-open (see the module docstring); returns how many."""
        links = self.links()
        for link in links:
            link.silent = True
        return len(links)

    def heal(self) -> None:
        """End a blackhole; connections that lost traffic are severed (new ones go through)."""
        self.blackhole = False
        for link in self.links():
            if link.silent:
                link.close()

    def retarget(self, port: int) -> None:
        self.target = (self.target[0], port)

    def close(self) -> None:
        self._closed = True
        for server in (self.server, self.control):
            with contextlib.suppress(OSError):
                server.close()
        self.blackhole = False
        for link in self.links():
            link.close()


def ask(port: int, command: str) -> None:
    """Ask the proxy listening for control on ``port`` for a fault; returns once it is in place."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as conn:
        conn.sendall(command.encode() + b"\n")
        conn.makefile("r").readline()
