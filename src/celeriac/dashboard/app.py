"""The dashboard's ASGI application: :func:`create_app` wires the parts together.

Other parts of Celeriac add routes of their own (``/metrics``) through ``extra_routes``; a
route reads the running :class:`Dashboard` (history, recorder, cluster poll) from
``request.app.state.dashboard``. Every route sits behind :class:`~.security.GuardMiddleware`.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import TYPE_CHECKING

from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.responses import PlainTextResponse, Response
from starlette.routing import BaseRoute, Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.templating import Jinja2Templates

from celeriac.dashboard import actions, pages
from celeriac.dashboard.cluster import Cluster
from celeriac.dashboard.config import DashboardConfig
from celeriac.dashboard.history import HistoryStore, open_history
from celeriac.dashboard.recorder import Recorder
from celeriac.dashboard.security import Guard, GuardMiddleware

if TYPE_CHECKING:
    from starlette.requests import Request

    from celeriac.metrics.events import EventMetrics

if TYPE_CHECKING:
    from celeriac.app import Celeriac

HERE = Path(__file__).parent


class Dashboard:
    """The running parts behind the pages."""

    def __init__(self, app: Celeriac, config: DashboardConfig, history: HistoryStore) -> None:
        self.app = app
        self.config = config
        self.history = history
        self.cluster = Cluster(app, queues=config.queues)
        #: Prometheus metrics from the events seen (``/metrics``), when prometheus-client is
        #: installed (``celeriac[metrics]``)
        self.metrics = event_metrics()
        self.recorder = Recorder(
            app,
            history,
            config,
            on_queue=self.cluster.queues.add,
            on_events=self.metrics.events if self.metrics is not None else None,
        )
        self.guard = Guard(config)
        self.templates = Jinja2Templates(directory=str(HERE / "templates"))
        self.templates.env.globals["config"] = config
        self.templates.env.filters.update(secs=secs, when=when)
        self._started = False

    def start(self) -> None:
        self._started = True
        self.recorder.start()
        self.cluster.start()

    def stop(self) -> None:
        if self._started:
            self.cluster.stop()
            self.recorder.stop()
        self.history.close()


def secs(value: float | None) -> str:
    """A duration for people: ``0.4s``, ``12s``, ``3m20s``, ``2h05m``."""
    if value is None:
        return "-"
    if value < 10:
        return f"{value:.1f}s"
    if value < 60:
        return f"{value:.0f}s"
    if value < 3600:
        return f"{int(value // 60)}m{int(value % 60):02d}s"
    return f"{int(value // 3600)}h{int(value % 3600 // 60):02d}m"


def when(value: float | None) -> str:
    """A unix time as this machine's local time (with the date when it is not today)."""
    if value is None:
        return ""
    moment = time.localtime(value)
    today = time.localtime()
    fmt = "%H:%M:%S" if moment[:3] == today[:3] else "%Y-%m-%d %H:%M:%S"
    return time.strftime(fmt, moment) + f".{int(value * 1000) % 1000:03d}"


def create_app(
    app: Celeriac,
    config: DashboardConfig | None = None,
    *,
    history: HistoryStore | None = None,
    extra_routes: Sequence[BaseRoute] = (),
    background: bool = True,
) -> Starlette:
    """The dashboard for ``app``; ``background=False`` starts no recorder or poll (tests)."""
    config = config or DashboardConfig()
    dashboard = Dashboard(app, config, history or open_history(config.history_url))

    @asynccontextmanager
    async def lifespan(_: Starlette) -> AsyncIterator[None]:
        if background:
            dashboard.start()
        try:
            yield
        finally:
            dashboard.stop()

    routes: list[BaseRoute] = [
        *pages.routes(),
        *actions.routes(),
        *extra_routes,
        Route("/metrics", metrics_page),
        Mount("/static", StaticFiles(directory=str(HERE / "static")), name="static"),
    ]
    web = Starlette(
        routes=routes,
        lifespan=lifespan,
        middleware=[Middleware(GuardMiddleware, guard=dashboard.guard)],
    )
    web.state.dashboard = dashboard
    return web


def event_metrics() -> EventMetrics | None:
    """Metrics from events, or None without prometheus-client."""
    try:
        from celeriac.metrics.events import EventMetrics
    except ImportError:
        return None
    try:
        return EventMetrics()
    except ImportError:  # celeriac.metrics imports prometheus-client lazily
        return None


async def metrics_page(request: Request) -> Response:
    """``/metrics``: the task metrics of every worker whose events this dashboard saw."""
    metrics = request.app.state.dashboard.metrics
    if metrics is None:
        return PlainTextResponse("/metrics needs prometheus-client: celeriac[metrics]\n", 404)
    body, content_type = metrics.render()
    return Response(body, media_type=content_type)
