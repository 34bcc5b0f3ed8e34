"""``celeriac`` — the command line."""

from __future__ import annotations

import importlib
import json
import socket
import sys
from typing import Any

import click

from celeriac import __version__
from celeriac.app import Celeriac
from celeriac.cli.control import expand_nodename
from celeriac.cli.loading import load_app
from celeriac.exceptions import CeleriacError
from celeriac.urls import mask_urls


class _State:
    def __init__(self, app_spec: str | None) -> None:
        self.app_spec = app_spec
        self._app: Celeriac | None = None

    @property
    def app(self) -> Celeriac:
        if self._app is None:
            if not self.app_spec:
                raise click.UsageError("this command needs an app: celeriac -A proj ...")
            try:
                self._app = load_app(self.app_spec)
            except CeleriacError as exc:
                raise click.ClickException(str(exc)) from exc
        return self._app


pass_state = click.make_pass_decorator(_State)


#: Commands defined in modules of their own, imported when run (or listed by --help): a worker
#: does not carry beat's scheduler or the health probe's HTTP client (email, ssl) in each of
#: its processes.
_LAZY_COMMANDS = {
    "beat": "celeriac.cli.beat",
    "control": "celeriac.cli.control",
    "dashboard": "celeriac.cli.dashboard",
    "db": "celeriac.cli.db",
    "events": "celeriac.cli.events",
    "health": "celeriac.cli.health",
    "inspect": "celeriac.cli.control",
    "status": "celeriac.cli.control",
}


class _MaskingGroup(click.Group):
    """Every command's error message, masked: a URL in it shows no password.

    Also the group that imports a command's module only when that command is wanted.
    """

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted({*super().list_commands(ctx), *_LAZY_COMMANDS})

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        command = super().get_command(ctx, cmd_name)
        if command is None and cmd_name in _LAZY_COMMANDS:
            module = importlib.import_module(_LAZY_COMMANDS[cmd_name])
            command = getattr(module, cmd_name)
            assert isinstance(command, click.Command)
            self.add_command(command, cmd_name)
        return command

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except click.ClickException as exc:
            # Masked in place, so the error keeps its kind (a UsageError its usage and exit
            # code); click types the attribute Final for its own code, not for this.
            setattr(exc, "message", mask_urls(exc.message))  # noqa: B010
            raise


@click.group(cls=_MaskingGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "-A",
    "--app",
    "app_spec",
    metavar="MODULE[:APP]",
    envvar="CELERIAC_APP",
    help="The app to use, e.g. proj or proj:app.",
)
@click.version_option(__version__, prog_name="celeriac")
@click.pass_context
def cli(ctx: click.Context, app_spec: str | None) -> None:
    """Celeriac: a distributed task queue that speaks Celery's protocol."""
    ctx.obj = _State(app_spec)


def _concurrency(ctx: click.Context, param: click.Parameter, value: int | None) -> int | None:
    # As Celery: 0 (or nothing) means worker_concurrency, else the CPU count; below 0 is wrong.
    if value is not None and value < 0:
        raise click.BadParameter(f"must be 0 (the CPU count) or more, not {value}")
    return value or None


def _autoscale(ctx: click.Context, param: click.Parameter, value: str | None) -> Any:
    from celeriac.worker.autoscale import parse

    try:
        return None if value is None else parse(value)
    except CeleriacError as exc:
        raise click.BadParameter(str(exc)) from exc


@cli.command()
@click.option(
    "-Q", "--queues", help="Comma-separated queues to consume (default: the default queue)."
)
@click.option(
    "-c",
    "--concurrency",
    type=int,
    callback=_concurrency,
    help="Tasks run at once (default, or 0: worker_concurrency, else the CPU count).",
)
@click.option(
    "-P",
    "--pool",
    type=click.Choice(["prefork", "threads", "solo", "asyncio"]),
    help="Where tasks run (default: prefork; solo runs one task at a time).",
)
@click.option(
    "--autoscale",
    metavar="MAX,MIN",
    callback=_autoscale,
    help="Grow the pool up to MAX while work waits, shrink to MIN when idle (prefork, threads).",
)
@click.option(
    "-l",
    "--loglevel",
    default="warning",
    show_default=True,
    type=click.Choice(["debug", "info", "warning", "error", "critical"], case_sensitive=False),
    help="info adds a line per task received and finished (the banner shows at every level).",
)
@click.option("-n", "--hostname", help="Node name (default: celeriac@<host>; %h is the host).")
@click.option("--prefetch-multiplier", type=int, help="Messages leased per slot (default: 4).")
@click.option("--max-tasks-per-child", type=int, help="Replace a prefork child after N tasks.")
@click.option(
    "--max-memory-per-child", type=int, help="Replace a prefork child above this RSS (KiB)."
)
@click.option(
    "--time-limit", type=float, help="Hard time limit in seconds for tasks that set none."
)
@click.option(
    "--soft-time-limit", type=float, help="Soft time limit in seconds for tasks that set none."
)
@click.option(
    "-B", "--beat", "embed_beat", is_flag=True, help="Also run beat here (safe on every node)."
)
@click.option("-E", "--task-events", is_flag=True, help="Send task events (monitoring).")
@click.option("--without-heartbeat", is_flag=True, help="Send no worker-* events.")
@click.option(
    "--without-gossip", is_flag=True, help="Accepted for Celery's sake: there is no gossip."
)
@click.option(
    "--without-mingle", is_flag=True, help="Accepted for Celery's sake: there is no mingle."
)
@click.option(
    "-O",
    "optimization",
    type=click.Choice(["fair", "default"]),
    help="Accepted for Celery's sake: tasks already go to free slots only (fair).",
)
@click.option("-f", "--logfile", help="Log to this file (appending) instead of stderr.")
@click.option("--pidfile", help="Write the worker's pid here; removed when it stops.")
@click.option(
    "-D", "--detach", is_flag=True, help="Run in the background (with --pidfile, --logfile)."
)
@click.option("--metrics-port", type=int, help="Serve Prometheus /metrics on this port.")
@click.option("--health-port", type=int, help="Serve /livez and /readyz on this port.")
@pass_state
def worker(
    state: _State,
    queues: str | None,
    concurrency: int | None,
    pool: str | None,
    autoscale: tuple[int, int] | None,
    loglevel: str,
    hostname: str | None,
    prefetch_multiplier: int | None,
    max_tasks_per_child: int | None,
    max_memory_per_child: int | None,
    time_limit: float | None,
    soft_time_limit: float | None,
    embed_beat: bool,
    task_events: bool,
    without_heartbeat: bool,
    without_gossip: bool,
    without_mingle: bool,
    optimization: str | None,
    logfile: str | None,
    pidfile: str | None,
    detach: bool,
    metrics_port: int | None,
    health_port: int | None,
) -> None:
    """Consume queues and run their tasks."""
    from celeriac.cli.daemon import Pidfile, setup_logging
    from celeriac.cli.daemon import detach as become_daemon
    from celeriac.worker import Worker

    app = state.app
    if detach and not pidfile:
        raise click.UsageError("--detach needs --pidfile (to find and stop the worker)")
    if autoscale is not None and (pool or app.conf.worker_pool) not in ("prefork", "threads"):
        raise click.UsageError(
            f"--autoscale: the {pool or app.conf.worker_pool} pool has a fixed size; "
            "use --pool prefork or threads"
        )
    pid = Pidfile(pidfile) if pidfile else None
    try:
        if pid is not None:
            pid.check()
        setup_logging(loglevel, app.conf.worker_log_format, logfile)
    except CeleriacError as exc:
        raise click.ClickException(str(exc)) from exc
    if detach:
        become_daemon()
    names = [q.strip() for q in queues.split(",") if q.strip()] if queues else None
    # The node's name in the settings, so that every process of this worker (prefork children
    # consume on their own) shares one copy of a broadcast.
    hostname = expand_nodename(hostname)  # Celery's -n name@%h
    app.conf.worker_hostname = (
        hostname or app.conf.worker_hostname or f"celeriac@{socket.gethostname()}"
    )
    if task_events:  # in the settings: prefork children read it there
        app.conf.worker_send_task_events = True
    if time_limit is not None:  # the settings' defaults, which every pool reads
        app.conf.task_time_limit = time_limit
    if soft_time_limit is not None:
        app.conf.task_soft_time_limit = soft_time_limit
    if metrics_port is not None:
        app.conf.worker_metrics_port = metrics_port
    if health_port is not None:
        app.conf.worker_health_port = health_port
    try:
        # As Celery: without -Q, a worker consumes every queue of task_queues when it is set.
        w = Worker(
            app,
            queues=names or list(app.topology.queues) or None,
            concurrency=concurrency,
            pool=pool,
            hostname=hostname,
            prefetch_multiplier=prefetch_multiplier,
            max_tasks_per_child=max_tasks_per_child,
            max_memory_per_child=max_memory_per_child,
            heartbeat=not without_heartbeat,  # as Celery: worker-* events unless told otherwise
            autoscale=autoscale,
        )
        if pid is not None:
            pid.write()
        if embed_beat:
            from celeriac import signals
            from celeriac.beat.scheduler import start_embedded_beat

            embedded = start_embedded_beat(app)  # a bad schedule fails here, before the worker
            # Stop beat first (handing its lease on at once), before the worker closes the app.
            signals.worker_shutdown.connect(lambda sender, **kw: embedded.stop(), sender=w)
        w.start()
    except CeleriacError as exc:
        raise click.ClickException(str(exc)) from exc
    finally:
        if pid is not None:
            pid.remove()


_JSON_KINDS: dict[type, str] = {list: "list (array)", dict: "object"}


def _json_arg(value: str | None, kind: type, what: str) -> Any:
    if value is None:
        return kind()
    try:
        parsed = json.loads(value)
    except json.JSONDecodeError as exc:
        raise click.BadParameter(f"{what} is not valid JSON: {exc}") from exc
    if not isinstance(parsed, kind):
        raise click.BadParameter(f"{what} must be a JSON {_JSON_KINDS[kind]}")
    return parsed


@cli.command()
@click.argument("name")
@click.option("-a", "--args", "args_json", help="Positional arguments as a JSON list.")
@click.option("-k", "--kwargs", "kwargs_json", help="Keyword arguments as a JSON object.")
@click.option("--countdown", type=float, help="Run no earlier than this many seconds from now.")
@click.option("--expires", type=float, help="Drop the task if not started within N seconds.")
@click.option("-Q", "--queue", help="Queue to send to.")
@click.option("--priority", type=int, help="Message priority (0-9 on most brokers).")
@click.option("--wait", is_flag=True, help="Wait for the result and print it.")
@click.option(
    "--timeout", type=float, default=60.0, show_default=True, help="Seconds --wait waits."
)
@click.option(
    "--unregistered",
    is_flag=True,
    help="Send even if the app has no such task (one only other workers define).",
)
@pass_state
def call(
    state: _State,
    name: str,
    args_json: str | None,
    kwargs_json: str | None,
    countdown: float | None,
    expires: float | None,
    queue: str | None,
    priority: int | None,
    wait: bool,
    timeout: float,
    unregistered: bool,
) -> None:
    """Send a task by name; print its id, or its result with --wait."""
    args = _json_arg(args_json, list, "--args")
    kwargs = _json_arg(kwargs_json, dict, "--kwargs")
    if not unregistered:
        _known_task(state.app, name)
    try:
        result = state.app.send_task(
            name, args, kwargs, countdown=countdown, expires=expires, queue=queue, priority=priority
        )
        if not wait:
            click.echo(result.id)
            return
        value = result.get(timeout=timeout)
    except CeleriacError as exc:
        raise click.ClickException(f"{type(exc).__name__}: {exc}") from exc
    except Exception as exc:
        raise click.ClickException(f"task failed: {type(exc).__name__}: {exc}") from exc
    click.echo(json.dumps(value) if not isinstance(value, str) else value)


def _known_task(app: Celeriac, name: str) -> None:
    """A name the app does not define is most likely a typo: say so instead of sending a
    message no worker of this project runs."""
    app.import_modules()
    if name in app.tasks:
        return
    import difflib  # only for this message

    close = difflib.get_close_matches(name, list(app.tasks), n=1, cutoff=0.6)
    hint = f"did you mean {close[0]!r}? " if close else ""
    raise click.ClickException(
        f"no task named {name!r} in app {app.main or '__main__'}; {hint}"
        "(--unregistered sends it anyway, for a task only other workers define)"
    )


@cli.command()
@click.argument("task_id")
@click.option("--traceback", "show_tb", is_flag=True, help="Print the traceback of a failure.")
@click.option("--json", "as_json", is_flag=True, help="Print the whole result document.")
@pass_state
def result(state: _State, task_id: str, show_tb: bool, as_json: bool) -> None:
    """Show the state and result of a task."""
    try:
        meta = state.app.backend.get_meta(task_id)
    except CeleriacError as exc:
        raise click.ClickException(str(exc)) from exc
    if as_json:
        click.echo(json.dumps(meta, indent=2, default=str))
        return
    status = meta.get("status")
    if status == "SUCCESS":
        value = meta.get("result")
        click.echo(
            f"SUCCESS: {value if isinstance(value, str) else json.dumps(value, default=str)}"
        )
    elif status in ("FAILURE", "REVOKED", "RETRY"):
        err = meta.get("result") or {}
        click.echo(
            f"{status}: {err.get('exc_type')}: {', '.join(map(str, err.get('exc_message') or []))}"
        )
        if show_tb and meta.get("traceback"):
            click.echo(meta["traceback"])
    else:
        click.echo(str(status))


@cli.command()
@click.option("-f", "--force", is_flag=True, help="Do not ask for confirmation.")
@click.option("-Q", "--queues", help="Comma-separated queues (default: the default queue).")
@pass_state
def purge(state: _State, force: bool, queues: str | None) -> None:
    """Delete every waiting message from the queues."""
    app = state.app
    names = [q.strip() for q in queues.split(",")] if queues else [app.conf.task_default_queue]
    if not force:
        click.confirm(f"Delete all waiting messages from {', '.join(names)}?", abort=True)
    total = sum(app.broker.purge(q) for q in names)
    click.echo(f"purged {total} message(s) from {', '.join(names)}")


@cli.group()
def dlq() -> None:
    """Inspect, replay or purge dead-lettered messages."""


@dlq.command("list")
@click.option("--limit", type=int, default=50, show_default=True, help="Most letters listed.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON for scripts.")
@pass_state
def dlq_list(state: _State, limit: int, as_json: bool) -> None:
    """List dead letters with the reason each was set aside."""
    from rich.console import Console
    from rich.table import Table

    letters = state.app.broker.dead_letters(limit)
    if as_json:
        click.echo(
            json.dumps(
                [
                    {
                        "id": d.id,
                        "queue": d.queue,
                        "reason": d.reason,
                        "failed_at": d.failed_at,
                        "task": d.message.headers.get("task"),
                        "task_id": d.message.task_id,
                    }
                    for d in letters
                ],
                indent=2,
            )
        )
        return
    table = Table(title=f"{len(letters)} dead letter(s)")
    for col in ("id", "queue", "task", "task id", "reason"):
        table.add_column(col)
    for d in letters:
        table.add_row(
            str(d.id), d.queue, str(d.message.headers.get("task")), str(d.message.task_id), d.reason
        )
    Console().print(table)


@dlq.command("replay")
@click.argument("ids", nargs=-1, type=int)
@pass_state
def dlq_replay(state: _State, ids: tuple[int, ...]) -> None:
    """Put dead letters (all, or the given ids) back on their queues."""
    n = state.app.broker.replay_dead_letters(list(ids) if ids else None)
    click.echo(f"replayed {n} message(s)")


@dlq.command("purge")
@click.option("-f", "--force", is_flag=True, help="Do not ask for confirmation.")
@pass_state
def dlq_purge(state: _State, force: bool) -> None:
    """Delete every dead letter."""
    if not force:
        click.confirm("Delete all dead letters?", abort=True)
    click.echo(f"deleted {state.app.broker.purge_dead_letters()} dead letter(s)")


@cli.command()
@click.option(
    "-n",
    "--tasks",
    "count",
    type=int,
    default=2000,
    show_default=True,
    help="How many tasks to send.",
)
@click.option(
    "-c", "--concurrency", type=int, default=2, show_default=True, help="The worker's slots."
)
@click.option(
    "--dir",
    "workdir",
    type=click.Path(file_okay=False),
    help="Where to keep the SQLite file (default: a temporary directory).",
)
def demo(count: int, concurrency: int, workdir: str | None) -> None:
    """Start a worker and a client on an embedded SQLite file and run tasks through them."""
    from celeriac.cli.demo import run_demo

    sys.exit(run_demo(count=count, concurrency=concurrency, workdir=workdir))


def main() -> None:
    cli(prog_name="celeriac")
