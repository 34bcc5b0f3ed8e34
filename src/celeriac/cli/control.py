"""``celeriac inspect``, ``celeriac control`` and ``celeriac status``: remote control from the
shell, as Celery's commands. Each calls ``app.control`` and prints the replies by node::

    -> w1@host: OK
        pong

    1 node online.

``--json`` prints the replies as one JSON object (``{node: reply}``) instead.
"""

from __future__ import annotations

import json
import socket
from typing import Any

import click

from celeriac.app import Celeriac
from celeriac.exceptions import CeleriacError

INSPECT_COMMANDS = (
    "ping",
    "active",
    "reserved",
    "scheduled",
    "registered",
    "stats",
    "revoked",
    "active_queues",
    "conf",
    "query_task",
)
CONTROL_COMMANDS = (
    "revoke",
    "rate_limit",
    "time_limit",
    "shutdown",
    "pool_grow",
    "pool_shrink",
    "add_consumer",
    "cancel_consumer",
)


def expand_nodename(name: str | None) -> str | None:
    """Celery's node name rules: ``%h`` the host name, ``%n`` its first label, ``%d`` the
    domain; a name with no ``@`` is a host, ``celery@<name>`` (``-n worker1@%h``)."""
    if not name:
        return name
    host = socket.getfqdn() or socket.gethostname()
    short, _, domain = host.partition(".")
    expanded = name.replace("%h", host).replace("%n", short).replace("%d", domain)
    return expanded if "@" in expanded else f"celery@{expanded}"


def _destination(value: str | None) -> list[str] | None:
    return [d.strip() for d in value.split(",") if d.strip()] if value else None


def _merge(replies: list[dict[str, Any]]) -> dict[str, Any]:
    merged: dict[str, Any] = {}
    for reply in replies:
        merged.update(reply)
    return merged


def _lines(reply: Any) -> tuple[str, list[str]]:
    """A node's status word and the lines that tell its reply."""
    if isinstance(reply, dict) and "error" in reply and len(reply) <= 2:
        return "ERROR", [str(reply["error"])]
    if isinstance(reply, dict) and set(reply) == {"ok"}:
        return "OK", [str(reply["ok"])]
    if isinstance(reply, list):
        if not reply:
            return "OK", ["- empty -"]
        return "OK", [
            "* " + (json.dumps(r, sort_keys=True) if isinstance(r, dict) else str(r)) for r in reply
        ]
    return "OK", json.dumps(reply, indent=2, sort_keys=True, default=repr).splitlines()


def show(replies: list[dict[str, Any]], as_json: bool, *, timeout: float) -> None:
    merged = _merge(replies)
    if as_json:
        click.echo(json.dumps(merged, sort_keys=True, default=repr))
        return
    if not merged:
        raise click.ClickException(f"no nodes replied within {timeout:g}s")
    for node in sorted(merged):
        status, lines = _lines(merged[node])
        click.echo(f"-> {node}: {status}")
        for line in lines:
            click.echo(f"    {line}")
    count = len(merged)
    click.echo(f"\n{count} node{'s' if count != 1 else ''} online.")


def _options(fn: Any) -> Any:
    fn = click.option("--json", "as_json", is_flag=True, help="Print the replies as JSON.")(fn)
    fn = click.option(
        "-t", "--timeout", type=float, default=1.0, show_default=True, help="Seconds to wait."
    )(fn)
    return click.option(
        "-d", "--destination", help="Comma-separated node names (default: every node)."
    )(fn)


def _app(ctx: click.Context) -> Celeriac:
    app: Celeriac = ctx.obj.app
    return app


@click.command()
@click.argument("method", type=click.Choice(INSPECT_COMMANDS))
@click.argument("arguments", nargs=-1)
@_options
@click.pass_context
def inspect(
    ctx: click.Context,
    method: str,
    arguments: tuple[str, ...],
    destination: str | None,
    timeout: float,
    as_json: bool,
) -> None:
    """Ask workers what they do: ping, active, reserved, ..., query_task ID..."""
    app = _app(ctx)
    args: dict[str, Any] = {}
    if method == "query_task":
        args["ids"] = list(arguments)
    elif method == "conf" and arguments:
        args["with_defaults"] = arguments[0].lower() in ("1", "true", "yes")
    try:
        replies = app.control.broadcast(
            method, args, destination=_destination(destination), reply=True, timeout=timeout
        )
    except CeleriacError as exc:
        raise click.ClickException(str(exc)) from exc
    show(replies, as_json, timeout=timeout)


def _control_arguments(method: str, arguments: tuple[str, ...]) -> dict[str, Any]:
    def need(n: int, usage: str) -> None:
        if len(arguments) < n:
            raise click.UsageError(f"usage: celeriac control {method} {usage}")

    if method == "rate_limit":
        need(2, "TASK_NAME RATE")
        return {"task_name": arguments[0], "rate_limit": arguments[1]}
    if method == "time_limit":
        need(2, "TASK_NAME SOFT [HARD]")
        hard = float(arguments[2]) if len(arguments) > 2 else None
        return {"task_name": arguments[0], "soft": float(arguments[1]), "hard": hard}
    if method in ("pool_grow", "pool_shrink"):
        return {"n": int(arguments[0]) if arguments else 1}
    if method in ("add_consumer", "cancel_consumer"):
        need(1, "QUEUE")
        return {"queue": arguments[0]}
    return {}


@click.command()
@click.argument("method", type=click.Choice(CONTROL_COMMANDS))
@click.argument("arguments", nargs=-1)
@click.option("--terminate", is_flag=True, help="revoke: also stop the task if it runs.")
@click.option("--signal", "signame", default="SIGTERM", show_default=True, help="revoke signal.")
@_options
@click.pass_context
def control(
    ctx: click.Context,
    method: str,
    arguments: tuple[str, ...],
    terminate: bool,
    signame: str,
    destination: str | None,
    timeout: float,
    as_json: bool,
) -> None:
    """Change running workers: revoke ID... [--terminate], rate_limit, time_limit, ..."""
    app = _app(ctx)
    nodes = _destination(destination)
    try:
        if method == "revoke":
            if not arguments:
                raise click.UsageError("usage: celeriac control revoke TASK_ID...")
            replies = app.control.revoke(
                list(arguments),
                terminate=terminate,
                signal=signame,
                destination=nodes,
                reply=True,
                timeout=timeout,
            )
        elif method == "shutdown":
            app.control.shutdown(destination=nodes)
            click.echo("shutdown sent")
            return
        else:
            replies = app.control.broadcast(
                method,
                _control_arguments(method, arguments),
                destination=nodes,
                reply=True,
                timeout=timeout,
            )
    except CeleriacError as exc:
        raise click.ClickException(str(exc)) from exc
    show(replies, as_json, timeout=timeout)


@click.command()
@_options
@click.pass_context
def status(ctx: click.Context, destination: str | None, timeout: float, as_json: bool) -> None:
    """List the workers that answer a ping."""
    app = _app(ctx)
    try:
        replies = app.control.ping(destination=_destination(destination), timeout=timeout)
    except CeleriacError as exc:
        raise click.ClickException(str(exc)) from exc
    merged = _merge(replies)
    if as_json:
        click.echo(json.dumps(sorted(merged)))
        return
    if not merged:
        raise click.ClickException(f"no nodes replied within {timeout:g}s")
    for node in sorted(merged):
        click.echo(f"-> {node}: OK")
    count = len(merged)
    click.echo(f"\n{count} node{'s' if count != 1 else ''} online.")
