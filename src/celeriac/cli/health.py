"""``celeriac health``: an exec probe of the worker on this machine.

It asks the worker's own health endpoint (``worker_health_port``) rather than pinging it by
remote control: no broker round trip, so a probe run every few seconds costs the broker
nothing, and it answers for this very process (a ping answers for a node name, which
another worker could share).
"""

from __future__ import annotations

import click

from celeriac.health.probe import check


@click.command()
@click.option("--port", type=int, help="The worker's health port (default: worker_health_port).")
@click.option("--host", default="127.0.0.1", show_default=True, help="The worker's address.")
@click.option(
    "--live",
    is_flag=True,
    help="Check /livez (the worker's loop turns) instead of /readyz (it consumes).",
)
@click.option(
    "--timeout", type=float, default=2.0, show_default=True, help="Seconds to wait for an answer."
)
@click.pass_context
def health(ctx: click.Context, port: int | None, host: str, live: bool, timeout: float) -> None:
    """Exit 0 when the local worker is ready (or alive, with --live), 1 when it is not."""
    if port is None:
        port = ctx.obj.app.conf.worker_health_port
        if port is None:
            raise click.UsageError("no --port given and worker_health_port is not set")
    result = check(host, port, "/livez" if live else "/readyz", timeout)
    click.echo(result.detail)
    ctx.exit(0 if result.ok else 1)
