"""``celeriac -A proj beat``: run beat, or manage its entries (list, add, remove, pause, resume).

A thin shell over :mod:`celeriac.beat.api`. The app comes from the root command's ``-A``
(``ctx.obj.app``); this module does not import ``celeriac.cli.main``, which registers it.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import sys
import time
from typing import Any

import click

from celeriac.app import Celeriac
from celeriac.beat import api
from celeriac.beat.scheduler import DEFAULT_LEASE_TTL, Beat
from celeriac.beat.schedules import Schedule, clocked, crontab, schedule
from celeriac.exceptions import CeleriacError
from celeriac.urls import mask_log_handlers

_LEVELS = click.Choice(["debug", "info", "warning", "error", "critical"], case_sensitive=False)


def _app(ctx: click.Context) -> Celeriac:
    app = getattr(ctx.find_root().obj, "app", None)
    if not isinstance(app, Celeriac):
        raise click.UsageError("this command needs an app: celeriac -A proj beat ...")
    return app


@click.group(invoke_without_command=True)
@click.option(
    "-l", "--loglevel", default="info", show_default=True, type=_LEVELS, help="Log level."
)
@click.option(
    "--lease",
    "lease_ttl",
    type=float,
    default=DEFAULT_LEASE_TTL,
    show_default=True,
    help="Seconds a leader's lease lasts unrenewed: a dead leader is replaced about this fast.",
)
@click.pass_context
def beat(ctx: click.Context, loglevel: str, lease_ttl: float) -> None:
    """Send periodic tasks. Run it on as many nodes as you like: one leads, the rest stand by."""
    if ctx.invoked_subcommand is not None:
        return
    app = _app(ctx)
    logging.basicConfig(
        level=loglevel.upper(), format=app.conf.worker_log_format, stream=sys.stderr, force=True
    )
    mask_log_handlers()
    try:
        Beat(app, lease_ttl=lease_ttl).run()
    except CeleriacError as exc:
        raise click.ClickException(str(exc)) from exc


@beat.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print JSON for scripts.")
@click.pass_context
def beat_list(ctx: click.Context, as_json: bool) -> None:
    """List entries with their schedule, state, last run (when a message was last sent; never,
    before the first), next run, and the current leader."""
    app = _app(ctx)
    try:
        infos = api.list_entries(app)
        lease = app.beat_store.leader()
    except CeleriacError as exc:
        raise click.ClickException(str(exc)) from exc
    if as_json:
        leader = {"holder": lease.holder, "expires_at": lease.expires_at} if lease else None
        doc = {"leader": leader, "entries": [i.as_dict() for i in infos]}
        click.echo(json.dumps(doc, indent=2, default=str))
        return
    from rich.console import Console
    from rich.table import Table

    tz = api.app_timezone(app)
    table = Table(title=f"{len(infos)} beat entr{'y' if len(infos) == 1 else 'ies'}")
    for col in ("name", "task", "schedule", "source", "state", "last run", "next run"):
        table.add_column(col)
    for info in infos:
        e = info.entry
        table.add_row(
            e.name,
            e.task,
            e.schedule.describe(),
            "dynamic" if e.dynamic else "beat_schedule",
            info.state,
            "never" if info.last_sent is None else _when(info.last_sent, tz),
            _when(info.next_tick, tz),
        )
    console = Console()
    console.print(table)
    for info in infos:
        if info.problem is not None:  # celeriac beat refuses to start for these
            console.print(f"[red]{info.problem}[/]")
    if lease:
        console.print(f"leader: {lease.holder} (lease for {lease.expires_at - time.time():.1f}s)")
    else:
        console.print("leader: none (no beat is running)")


def _when(ts: float | None, tz: dt.tzinfo) -> str:
    if ts is None or ts <= 0:
        return "-"
    return dt.datetime.fromtimestamp(ts, tz).strftime("%Y-%m-%d %H:%M:%S %Z")


def _json(value: str | None, kind: type, what: str) -> Any:
    if value is None:
        return kind()
    try:
        parsed = json.loads(value)
    except json.JSONDecodeError as exc:
        raise click.BadParameter(f"{what} is not valid JSON: {exc}") from exc
    if not isinstance(parsed, kind):
        raise click.BadParameter(f"{what} must be a JSON {kind.__name__}")
    return parsed


def _schedule(every: float | None, cron: str | None, at: str | None) -> Schedule:
    given = [x for x in (every, cron, at) if x is not None]
    if len(given) != 1:
        raise click.UsageError("give exactly one of --every SECONDS, --cron EXPR, --at ISO-TIME")
    if every is not None:
        return schedule(every)
    if cron is not None:
        return crontab.from_string(cron)
    try:
        return clocked(dt.datetime.fromisoformat(str(at)))
    except ValueError as exc:
        raise click.BadParameter(f"--at: {exc}") from exc


@beat.command("add")
@click.argument("name")
@click.option("-t", "--task", required=True, help="Task name, e.g. proj.add.")
@click.option("--every", type=float, help="Interval in seconds.")
@click.option("--cron", help='Cron expression, e.g. "*/5 * * * *" (in the app\'s timezone).')
@click.option("--at", help="Run once at this ISO time (UTC unless it has an offset).")
@click.option("-a", "--args", "args_json", help="Positional arguments as a JSON list.")
@click.option("-k", "--kwargs", "kwargs_json", help="Keyword arguments as a JSON object.")
@click.option("-Q", "--queue", help="Queue to send to.")
@click.option("--options", "options_json", help="Other send options as a JSON object.")
@click.option("--catchup", is_flag=True, help="After an outage, send one missed tick.")
@click.option("--unregistered", is_flag=True, help="The task is not importable here.")
@click.option("--replace", is_flag=True, help="Change the entry if it exists.")
@click.pass_context
def beat_add(
    ctx: click.Context,
    name: str,
    task: str,
    every: float | None,
    cron: str | None,
    at: str | None,
    args_json: str | None,
    kwargs_json: str | None,
    queue: str | None,
    options_json: str | None,
    catchup: bool,
    unregistered: bool,
    replace: bool,
) -> None:
    """Add (or --replace) a dynamic entry; running beats pick it up within a second or two."""
    options = _json(options_json, dict, "--options")
    if queue:
        options["queue"] = queue
    try:
        entry = api.add_entry(
            _app(ctx),
            name,
            task,
            _schedule(every, cron, at),
            args=_json(args_json, list, "--args"),
            kwargs=_json(kwargs_json, dict, "--kwargs"),
            options=options,
            catchup=catchup or None,
            unregistered=unregistered,
            replace=replace,
        )
    except CeleriacError as exc:
        raise click.ClickException(str(exc)) from exc
    click.echo(f"{'changed' if replace else 'added'} {entry.name}: {entry.schedule.describe()}")


def _change(ctx: click.Context, done: str, fn: Any, name: str) -> None:
    try:
        fn(_app(ctx), name)
    except CeleriacError as exc:
        raise click.ClickException(str(exc)) from exc
    click.echo(f"{done} {name}")


@beat.command("remove")
@click.argument("name")
@click.pass_context
def beat_remove(ctx: click.Context, name: str) -> None:
    """Remove a dynamic entry and its recorded runs."""
    _change(ctx, "removed", api.remove_entry, name)


@beat.command("pause")
@click.argument("name")
@click.pass_context
def beat_pause(ctx: click.Context, name: str) -> None:
    """Stop sending an entry (from beat_schedule or dynamic) until resumed."""
    _change(ctx, "paused", api.pause_entry, name)


@beat.command("resume")
@click.argument("name")
@click.pass_context
def beat_resume(ctx: click.Context, name: str) -> None:
    """Send a paused entry again; ticks missed meanwhile are skipped (or one sent: catchup)."""
    _change(ctx, "resumed", api.resume_entry, name)
