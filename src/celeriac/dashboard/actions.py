"""The buttons (POST): revoke and retry a task, replay and purge dead letters, pause and
resume beat entries, log in. Each checks the CSRF token (:mod:`.security`), does its work
off the event loop, and redirects back with a notice (post/redirect/get)."""

from __future__ import annotations

import ast
import logging
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qsl, quote

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import PlainTextResponse, RedirectResponse, Response
from starlette.routing import Route

from celeriac.dashboard.recorder import MASK
from celeriac.dashboard.security import COOKIE, safe_next
from celeriac.exceptions import CeleriacError

if TYPE_CHECKING:
    from celeriac.dashboard.app import Dashboard

logger = logging.getLogger("celeriac.dashboard")


def dash(request: Request) -> Dashboard:
    return request.app.state.dashboard  # type: ignore[no-any-return]


#: bytes a form may have (the buttons send a few fields)
MAX_FORM = 16 * 1024


async def read_form(request: Request) -> dict[str, str]:
    """An urlencoded form (all the buttons send), read without python-multipart."""
    body = b""
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_FORM:
            raise ValueError("form too large")
    if not body or "urlencoded" not in request.headers.get("content-type", ""):
        return {}
    return dict(parse_qsl(body.decode("utf-8", "replace"), keep_blank_values=True))


async def checked_form(request: Request) -> dict[str, str] | Response:
    """The request's form when it carries this dashboard's CSRF token, else a 403."""
    try:
        form = await read_form(request)
    except ValueError as exc:
        return PlainTextResponse(str(exc), 413)
    given = str(form.get("csrf") or request.headers.get("x-csrf-token") or "")
    if not dash(request).guard.csrf_ok(given):
        return PlainTextResponse("missing or wrong CSRF token: reload the page", 403)
    return form


def back(to: str, notice: str) -> Response:
    sep = "&" if "?" in to else "?"
    return RedirectResponse(f"{safe_next(to)}{sep}notice={quote(notice)}", 303)


async def revoke(request: Request) -> Response:
    form = await checked_form(request)
    if isinstance(form, Response):
        return form
    d, uuid = dash(request), request.path_params["uuid"]
    terminate = form.get("terminate") == "1"
    await run_in_threadpool(d.app.control.revoke, uuid, terminate=terminate)
    logger.info("revoked %s from the dashboard (terminate=%s)", uuid, terminate)
    return back(f"/tasks/{uuid}", "revoke sent" + (" (terminate)" if terminate else ""))


def retry_arguments(args: str | None, kwargs: str | None) -> tuple[list[Any], dict[str, Any]]:
    """The arguments a task was called with, read back from their reprs (as events carry
    them); ValueError when they cannot be (masked, cut short, or not literals)."""
    if MASK in (args, kwargs):
        raise ValueError("its arguments are masked")
    try:
        a = ast.literal_eval(args) if args else ()
        k = ast.literal_eval(kwargs) if kwargs else {}
    except (ValueError, SyntaxError, MemoryError, RecursionError):
        raise ValueError("its arguments are not Python literals (or were cut short)") from None
    if not isinstance(a, tuple | list) or not isinstance(k, dict):
        raise ValueError("its arguments are not a tuple and a dict")
    return list(a), k


async def retry(request: Request) -> Response:
    form = await checked_form(request)
    if isinstance(form, Response):
        return form
    d, uuid = dash(request), request.path_params["uuid"]
    row = await run_in_threadpool(d.history.get, uuid)
    if row is None or not row.name:
        return back(f"/tasks/{uuid}", "cannot retry: the history does not know this task")
    try:
        args, kwargs = retry_arguments(row.args, row.kwargs)
        result = await run_in_threadpool(
            lambda: d.app.send_task(row.name or "", args, kwargs, queue=row.queue or None)
        )
    except (ValueError, CeleriacError) as exc:
        return back(f"/tasks/{uuid}", f"cannot retry: {exc}")
    return back(f"/tasks/{result.id}", f"sent again as {result.id} (retry of {uuid})")


async def replay(request: Request) -> Response:
    form = await checked_form(request)
    if isinstance(form, Response):
        return form
    d = dash(request)
    raw = str(form.get("id") or "")
    ids: list[Any] | None = None
    if raw:
        ids = [int(raw) if raw.isdigit() else raw]
    n = await run_in_threadpool(d.app.broker.replay_dead_letters, ids)
    d.cluster.refresh_soon()
    return back("/dead-letters", f"replayed {n} message(s)")


async def purge(request: Request) -> Response:
    form = await checked_form(request)
    if isinstance(form, Response):
        return form
    n = await run_in_threadpool(dash(request).app.broker.purge_dead_letters)
    return back("/dead-letters", f"deleted {n} dead letter(s)")


async def pause_or_resume(request: Request) -> Response:
    from celeriac.beat.api import pause_entry, resume_entry

    form = await checked_form(request)
    if isinstance(form, Response):
        return form
    d, name, what = dash(request), request.path_params["name"], request.path_params["what"]
    if what not in ("pause", "resume"):
        return PlainTextResponse("not found", 404)
    act = pause_entry if what == "pause" else resume_entry
    try:
        await run_in_threadpool(act, d.app, name)
    except CeleriacError as exc:
        return back("/beat", str(exc))
    return back("/beat", f"{'paused' if what == 'pause' else 'resumed'} {name}")


async def login(request: Request) -> Response:
    form = await checked_form(request)
    if isinstance(form, Response):
        return form
    d = dash(request)
    target = safe_next(str(form.get("next") or "/"))
    if not d.guard.token_ok(str(form.get("token") or "")):
        return RedirectResponse(f"/login?next={quote(target)}&notice=wrong+token", 303)
    response = RedirectResponse(target, 303)
    response.set_cookie(COOKIE, d.guard.session, httponly=True, samesite="strict")
    return response


def routes() -> list[Route]:
    return [
        Route("/tasks/{uuid}/revoke", revoke, methods=["POST"]),
        Route("/tasks/{uuid}/retry", retry, methods=["POST"]),
        Route("/dead-letters/replay", replay, methods=["POST"]),
        Route("/dead-letters/purge", purge, methods=["POST"]),
        Route("/beat/{name}/{what:str}", pause_or_resume, methods=["POST"]),
        Route("/login", login, methods=["POST"]),
    ]
