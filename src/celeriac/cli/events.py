"""``celeriac -A proj events``: watch the cluster's events live, or ``--dump`` them raw."""

from __future__ import annotations

import json
import time
from typing import TYPE_CHECKING

import click

from celeriac.exceptions import CeleriacError

if TYPE_CHECKING:
    from rich.console import Group

    from celeriac.events.state import State


@click.command()
@click.option("--dump", is_flag=True, help="Print each event as one JSON line.")
@click.option(
    "--freq",
    type=click.FloatRange(0.1, 60.0),
    default=1.0,
    show_default=True,
    help="Seconds between screen refreshes.",
)
@click.option(
    "--tasks",
    "max_rows",
    type=click.IntRange(1, 1000),
    default=20,
    show_default=True,
    help="Tasks shown in the live view.",
)
@click.option("--limit", type=click.IntRange(1), help="Stop after this many events.")
@click.option("--timeout", type=click.FloatRange(0.0), help="Stop after this many seconds.")
@click.pass_obj
def events(
    state: object,
    dump: bool,
    freq: float,
    max_rows: int,
    limit: int | None,
    timeout: float | None,
) -> None:
    """Watch events from the workers (start them with -E for task events)."""
    from celeriac.events import EventReceiver

    app = state.app  # type: ignore[attr-defined]
    try:
        if dump:
            with EventReceiver(app, {"*": _print_event}) as receiver:
                receiver.capture(limit=limit, timeout=timeout)
            return
        _live(EventReceiver(app), freq, max_rows, limit, timeout)
    except CeleriacError as exc:
        raise click.ClickException(str(exc)) from exc
    except KeyboardInterrupt:
        pass


def _print_event(event: dict[str, object]) -> None:
    click.echo(json.dumps(event, default=str), nl=True)


def _live(
    receiver: object, freq: float, max_rows: int, limit: int | None, timeout: float | None
) -> None:
    from rich.live import Live

    from celeriac.events import EventReceiver
    from celeriac.events.state import State

    assert isinstance(receiver, EventReceiver)
    cluster = State()
    receiver.handlers["*"] = cluster.event
    deadline = None if timeout is None else time.monotonic() + timeout
    seen = 0
    with receiver, Live(render(cluster, max_rows), auto_refresh=False) as live:
        while deadline is None or time.monotonic() < deadline:
            left = freq if deadline is None else min(freq, deadline - time.monotonic())
            seen += receiver.capture(limit=None if limit is None else limit - seen, timeout=left)
            live.update(render(cluster, max_rows), refresh=True)
            if limit is not None and seen >= limit:
                return


def render(cluster: State, max_rows: int) -> Group:
    """The screen: workers with their heartbeats and counts, then the latest tasks."""
    from rich.console import Group
    from rich.table import Table

    now = time.time()
    workers = Table(title="Workers", expand=True)
    for column in ("worker", "status", "heartbeat", "active", "processed", "load"):
        workers.add_column(column)
    for w in sorted(cluster.workers.values(), key=lambda w: w.hostname):
        age = w.heartbeat_age(now)
        workers.add_row(
            w.hostname,
            "[green]online[/]" if w.alive(now) else "[red]offline[/]",
            "-" if age is None else f"{age:.1f}s ago",
            str(w.active),
            str(w.processed),
            " ".join(f"{x:.2f}" for x in w.loadavg),
        )
    tasks = Table(title=f"Tasks (latest {max_rows})", expand=True)
    tasks.add_column("uuid", no_wrap=True, min_width=36)
    for column in ("name", "state", "runtime", "worker", "result"):
        tasks.add_column(column, overflow="ellipsis", no_wrap=True)
    colours = {"SUCCESS": "green", "FAILURE": "red", "RETRY": "yellow", "REVOKED": "magenta"}
    for t in cluster.recent_tasks(max_rows):
        colour = colours.get(t.state, "cyan")
        tasks.add_row(
            t.uuid,
            t.name or "?",
            f"[{colour}]{t.state}[/]",
            "" if t.runtime is None else f"{t.runtime:.3f}s",
            t.worker or "",
            t.result if t.result is not None else (t.exception or ""),
        )
    return Group(workers, tasks)
