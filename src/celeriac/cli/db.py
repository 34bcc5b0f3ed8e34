"""``celeriac -A proj db upgrade``: make or upgrade the tables of SQL transports (PostgreSQL)."""

from __future__ import annotations

import click

from celeriac.exceptions import CeleriacError


@click.group()
def db() -> None:
    """Manage the tables Celeriac keeps in a SQL database."""


@db.command()
@click.pass_obj
def upgrade(state: object) -> None:
    """Create or upgrade the tables of the app's broker and result backend (PostgreSQL)."""
    from celeriac.transports import open_transport, transport_class

    app = state.app  # type: ignore[attr-defined]
    urls = [app.conf.broker_url, app.result_backend_url() or ""]
    seen: set[str] = set()
    done = []
    try:
        for url in urls:
            if not url or url.startswith(("disabled", "rpc")):
                continue
            key = transport_class(url).server_key(url)
            if key in seen:
                continue
            seen.add(key)
            transport = open_transport(url)
            try:
                line = transport.upgrade_schema()
            finally:
                transport.close()
            if line is not None:
                done.append(line)
    except CeleriacError as exc:
        raise click.ClickException(str(exc)) from exc
    if not done:
        raise click.ClickException("neither broker_url nor result_backend keeps tables to upgrade")
    for line in done:
        click.echo(line)
