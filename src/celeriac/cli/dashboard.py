"""``celeriac -A proj dashboard``: the web dashboard (``pip install celeriac[dashboard]``)."""

from __future__ import annotations

import click

from celeriac.exceptions import CeleriacError


@click.command()
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option(
    "--port",
    type=click.IntRange(0, 65535),
    default=5555,
    show_default=True,
    help="Port to listen on (0: a free one).",
)
@click.option(
    "--history",
    "history_url",
    default="sqlite:///celeriac-dashboard.sqlite3",
    show_default=True,
    help="Where task history is kept: sqlite:///file.db or postgresql://user@host/db.",
)
@click.option(
    "--retention",
    type=click.FloatRange(0.0),
    default=7 * 86400.0,
    show_default=True,
    help="Seconds tasks stay in the history (0: forever).",
)
@click.option(
    "--token",
    envvar="CELERIAC_DASHBOARD_TOKEN",
    help="Require this token (needed to listen beyond loopback, or --basic-auth).",
)
@click.option(
    "--basic-auth",
    envvar="CELERIAC_DASHBOARD_BASIC_AUTH",
    metavar="USER:PASSWORD",
    help="Require HTTP basic auth with these credentials.",
)
@click.option(
    "--mask-args",
    "mask",
    multiple=True,
    metavar="TASK",
    help="Show this task's arguments as *** (a shell pattern; repeatable). Adds to the "
    "dashboard_masked_tasks setting.",
)
@click.option(
    "-Q",
    "--queues",
    help="Comma-separated queues to show besides the default queue, task_queues and those "
    "workers consume.",
)
@click.option(
    "--refresh",
    type=click.FloatRange(0.25, 60.0),
    default=1.0,
    show_default=True,
    help="Seconds between live updates of a page.",
)
@click.option(
    "-l",
    "--loglevel",
    default="warning",
    show_default=True,
    type=click.Choice(["debug", "info", "warning", "error"], case_sensitive=False),
    help="Log level of the dashboard process.",
)
@click.pass_obj
def dashboard(
    state: object,
    host: str,
    port: int,
    history_url: str,
    retention: float,
    token: str | None,
    basic_auth: str | None,
    mask: tuple[str, ...],
    queues: str | None,
    refresh: float,
    loglevel: str,
) -> None:
    """Serve the web dashboard (workers, queues, task history, dead letters, beat, charts)."""
    import logging

    from celeriac.dashboard.config import DashboardConfig, masked_tasks
    from celeriac.dashboard.server import serve

    app = state.app  # type: ignore[attr-defined]
    logging.basicConfig(level=loglevel.upper(), format="%(asctime)s %(levelname)s %(message)s")
    try:
        config = DashboardConfig(
            host=host,
            port=port,
            history_url=history_url,
            retention=retention,
            token=token or None,
            basic_auth=basic_auth or None,
            masked_tasks=masked_tasks(app.conf.dashboard_masked_tasks, mask),
            queues=tuple(q.strip() for q in (queues or "").split(",") if q.strip()),
            refresh=refresh,
        )
        serve(app, config, log_level=loglevel.lower())
    except CeleriacError as exc:
        raise click.ClickException(str(exc)) from exc
