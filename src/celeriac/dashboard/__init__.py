"""The web dashboard (``pip install celeriac[dashboard]``; ``celeriac -A proj dashboard``).

Workers, queues, a task history that outlives restarts, dead letters, beat entries and charts,
server-rendered with small live updates. Modules: :mod:`.app` (``create_app``), :mod:`.pages`
and :mod:`.actions` (the routes), :mod:`.views` (what pages show), :mod:`.recorder` (events into
the history), :mod:`.history` (the store's interface), :mod:`.sqlite_history` and
``transports/postgres/history.py`` (the stores), :mod:`.cluster` (worker stats and queue depths),
:mod:`.charts` (SVG), :mod:`.security` (auth and CSRF),
:mod:`.config` and :mod:`.server` (running it). Importing this package imports nothing heavy;
:func:`create_app` needs the extra's packages.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from celeriac.dashboard.config import DashboardConfig

if TYPE_CHECKING:
    from starlette.applications import Starlette

__all__ = ["DashboardConfig", "create_app"]


def create_app(*args: Any, **kwargs: Any) -> Starlette:
    """:func:`celeriac.dashboard.app.create_app` (imported on first use)."""
    from celeriac.dashboard.app import create_app as create

    return create(*args, **kwargs)
