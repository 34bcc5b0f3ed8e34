"""A small HTTP server on a thread of its own: each path a function that answers
``(status, body, content type)``. Both the worker's ports use it (one server when they are
the same port); the standard library's server is enough for a probe and a scrape."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Mapping

logger = logging.getLogger("celeriac.health")

Answer = tuple[int, bytes, str]
Route = Callable[[], Answer]


class HttpServer:
    """Serves ``routes`` on ``host:port`` (0: a free port; :attr:`port` tells which)."""

    def __init__(self, host: str, port: int, routes: Mapping[str, Route]) -> None:
        table = dict(routes)
        # Here, not at the top: http.server brings http.client, email and more, which a worker
        # serving neither port would carry in every process.
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                route = table.get(self.path.split("?", 1)[0])
                if route is None:
                    status, body, ctype = 404, b"not found\n", "text/plain; charset=utf-8"
                else:
                    try:
                        status, body, ctype = route()
                    except Exception as exc:  # a probe must answer, whatever went wrong
                        logger.exception("%s failed", self.path)
                        status, body, ctype = 500, f"{exc}\n".encode(), "text/plain"
                self.send_response(status)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: object) -> None:
                pass  # a probe every few seconds is not worth a log line

        self._server = ThreadingHTTPServer((host, port), Handler)
        self._server.daemon_threads = True
        self.host = host
        self.port: int = self._server.server_address[1]
        self._thread = threading.Thread(
            target=self._server.serve_forever, name=f"celeriac-http-{self.port}", daemon=True
        )

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()


def text(status: int, message: str) -> Answer:
    return status, f"{message}\n".encode(), "text/plain; charset=utf-8"
