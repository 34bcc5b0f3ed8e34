"""Who may use the dashboard, and which POSTs are the user's own.

* **Authentication** (when a token or basic auth is configured): a request carries
  ``Authorization: Bearer <token>``, basic auth, or the session cookie that ``/login`` sets
  after the token was typed in. The cookie holds an HMAC of the credentials, not the
  credentials, and is ``HttpOnly; SameSite=Strict``.
* **Unprotected** (loopback only, see :mod:`.config`): the ``Host`` header must name a
  loopback address too, so a web page on another site cannot reach the dashboard through a
  DNS name rebound to 127.0.0.1.
* **Cross-site requests**: every POST must carry the CSRF token (a form field ``csrf`` or an
  ``X-CSRF-Token`` header; pages embed it, another site cannot read it), and when the browser
  says where the request comes from (``Origin``, else ``Referer``) that must be this host.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
from urllib.parse import urlsplit

from starlette.datastructures import Headers
from starlette.requests import HTTPConnection
from starlette.responses import PlainTextResponse, RedirectResponse, Response
from starlette.types import ASGIApp, Receive, Scope, Send

from celeriac.dashboard.config import DashboardConfig, is_loopback

COOKIE = "celeriac_dashboard"
#: paths open without credentials (the login form; the stylesheet and script it uses)
OPEN_PATHS = ("/login", "/static/")


class Guard:
    def __init__(self, config: DashboardConfig) -> None:
        self.config = config
        secret = f"{config.token or ''}\0{config.basic_auth or ''}".encode()
        # Derived from the credentials, so sessions survive a restart; random without them.
        self._key = (
            hashlib.sha256(b"celeriac-dashboard\0" + secret).digest()
            if config.protected
            else secrets.token_bytes(32)
        )

    def _mac(self, what: str) -> str:
        return hmac.new(self._key, what.encode(), hashlib.sha256).hexdigest()

    @property
    def session(self) -> str:
        return self._mac("session")

    @property
    def csrf_token(self) -> str:
        return self._mac("csrf")

    def token_ok(self, token: str) -> bool:
        want = self.config.token
        return bool(want) and hmac.compare_digest(token.encode(), str(want).encode())

    def authenticated(self, conn: HTTPConnection) -> bool:
        if not self.config.protected:
            return True
        scheme, _, value = conn.headers.get("authorization", "").partition(" ")
        if scheme.lower() == "bearer" and self.token_ok(value.strip()):
            return True
        if scheme.lower() == "basic" and self.config.basic_auth:
            try:
                given = base64.b64decode(value.strip()).decode()
            except ValueError:
                given = ""
            if hmac.compare_digest(given.encode(), self.config.basic_auth.encode()):
                return True
        return hmac.compare_digest(conn.cookies.get(COOKIE, "").encode(), self.session.encode())

    def host_ok(self, headers: Headers) -> bool:
        if self.config.protected:
            return True
        host = urlsplit("//" + headers.get("host", "")).hostname or ""
        return is_loopback(host)

    def same_origin(self, headers: Headers) -> bool:
        """False when the browser says the request comes from another site."""
        source = headers.get("origin") or headers.get("referer")
        if not source:
            return True  # not a browser's cross-site form: the CSRF token still decides
        return urlsplit(source).netloc.lower() == headers.get("host", "").lower()

    def csrf_ok(self, given: str) -> bool:
        return hmac.compare_digest(given.encode(), self.csrf_token.encode())


class GuardMiddleware:
    """Applies :class:`Guard` to every HTTP request before it reaches a route."""

    def __init__(self, app: ASGIApp, guard: Guard) -> None:
        self.app = app
        self.guard = guard

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        conn = HTTPConnection(scope)
        response = self.refusal(conn, scope.get("method", "GET"))
        if response is not None:
            await response(scope, receive, send)
            return
        await self.app(scope, receive, send)

    def refusal(self, conn: HTTPConnection, method: str) -> Response | None:
        guard = self.guard
        if not guard.host_ok(conn.headers):
            return PlainTextResponse("this dashboard answers on a loopback address only", 400)
        if method not in ("GET", "HEAD", "OPTIONS") and not guard.same_origin(conn.headers):
            return PlainTextResponse("cross-site request refused", 403)
        path = conn.url.path
        if guard.authenticated(conn) or path.startswith(OPEN_PATHS):
            return None
        if guard.config.basic_auth and not guard.config.token:
            return PlainTextResponse(
                "authentication required",
                401,
                headers={"WWW-Authenticate": 'Basic realm="celeriac dashboard"'},
            )
        if method == "GET" and "text/html" in conn.headers.get("accept", ""):
            return RedirectResponse(f"/login?next={conn.url.path}", 303)
        return PlainTextResponse("authentication required", 401)


def safe_next(target: str | None) -> str:
    """A local path to go to after a login or an action (never another site)."""
    if not target or not target.startswith("/") or target.startswith("//") or "\\" in target:
        return "/"
    return target
