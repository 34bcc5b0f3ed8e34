"""The pages (GET). Each renders its template whole, or only its ``live`` block when the page's
script asks for a refresh (``X-Live: 1``), which it swaps in without reloading the page."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import HTMLResponse, Response
from starlette.routing import Route

from celeriac.dashboard import charts
from celeriac.dashboard.history import TaskQuery
from celeriac.dashboard.recorder import MASK
from celeriac.dashboard.views import beat_rows, dead_letter_rows, task_from_backend, worker_rows

if TYPE_CHECKING:
    from celeriac.dashboard.app import Dashboard

#: the charts' windows, by the name the page offers
WINDOWS = {"5m": 300.0, "15m": 900.0, "1h": 3600.0, "6h": 21600.0, "24h": 86400.0}
STATES = ("PENDING", "RECEIVED", "STARTED", "SUCCESS", "FAILURE", "RETRY", "REVOKED", "REJECTED")


def dash(request: Request) -> Dashboard:
    return request.app.state.dashboard  # type: ignore[no-any-return]


def render(request: Request, template: str, **context: Any) -> Response:
    d = dash(request)
    context.update(
        request=request,
        csrf=d.guard.csrf_token,
        notice=request.query_params.get("notice", ""),
        now=time.time(),
    )
    if request.headers.get("x-live"):
        tmpl = d.templates.get_template(template)
        html = "".join(tmpl.blocks["live"](tmpl.new_context(context)))
        return HTMLResponse(html, headers={"Cache-Control": "no-store"})
    return d.templates.TemplateResponse(request, template, context)


async def workers(request: Request) -> Response:
    d = dash(request)
    with d.recorder.lock:
        known = list(d.recorder.state.workers.values())
    rows = worker_rows(known, d.cluster.snapshot.stats, time.time())
    return render(request, "workers.html", workers=rows, polled=d.cluster.snapshot)


async def queues(request: Request) -> Response:
    d = dash(request)
    return render(request, "queues.html", snapshot=d.cluster.snapshot)


async def tasks(request: Request) -> Response:
    d = dash(request)
    p = request.query_params
    query = TaskQuery(
        text=p.get("q", "").strip(),
        state=p.get("state", ""),
        name=p.get("name", "").strip(),
        cursor=p.get("cursor", ""),
        limit=d.config.page_size,
    )
    page = await run_in_threadpool(d.history.page, query)
    total = await run_in_threadpool(d.history.count)
    return render(request, "tasks.html", page=page, query=query, total=total, states=STATES)


async def task_detail(request: Request) -> Response:
    d = dash(request)
    uuid = request.path_params["uuid"]
    row = await run_in_threadpool(d.history.get, uuid)
    backend = None
    if row is None:
        backend = await run_in_threadpool(task_from_backend, d.app, uuid)
    retryable = row is not None and row.name is not None and MASK not in (row.args or "")
    return render(request, "task.html", uuid=uuid, task=row, backend=backend, retryable=retryable)


async def dead_letters(request: Request) -> Response:
    d = dash(request)
    rows = await run_in_threadpool(dead_letter_rows, d.app, d.config, 200)
    return render(request, "dead_letters.html", letters=rows)


async def beat(request: Request) -> Response:
    d = dash(request)
    rows, error = await run_in_threadpool(beat_rows, d.app)
    return render(request, "beat.html", entries=rows, error=error)


async def chart_page(request: Request) -> Response:
    d = dash(request)
    window = request.query_params.get("window", "15m")
    span = WINDOWS.get(window, WINDOWS["15m"])
    end = time.time()
    finished = await run_in_threadpool(d.history.finished_since, end - span)
    b = charts.buckets(finished, end - span, end, 30)
    per_min = 60.0 / b.step
    svgs = [
        charts.line_chart(
            "Throughput (tasks/min)",
            {
                "succeeded": [n * per_min for n in b.succeeded],
                "failed": [n * per_min for n in b.failed],
            },
            chart_id="throughput",
        ),
        charts.line_chart(
            "Runtime percentiles (s)", {"p50": b.p50, "p95": b.p95, "p99": b.p99}, "s", "latency"
        ),
        charts.line_chart("Failures (per interval)", {"failed": b.failed}, chart_id="failures"),
    ]
    return render(
        request,
        "charts.html",
        svgs=svgs,
        window=window,
        windows=list(WINDOWS),
        finished=len(finished),
        failed=sum(b.failed),
    )


async def login(request: Request) -> Response:
    return render(request, "login.html", next=request.query_params.get("next", "/"), error="")


def routes() -> list[Route]:
    return [
        Route("/", workers, name="workers"),
        Route("/queues", queues, name="queues"),
        Route("/tasks", tasks, name="tasks"),
        Route("/tasks/{uuid}", task_detail, name="task"),
        Route("/dead-letters", dead_letters, name="dead_letters"),
        Route("/beat", beat, name="beat"),
        Route("/charts", chart_page, name="charts"),
        Route("/login", login, name="login"),
    ]
