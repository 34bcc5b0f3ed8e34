"""``celeriac -A proj db upgrade``: make or upgrade the tables of SQL transports (PostgreSQL)."""

from __future__ import annotations

import json

import click

from celeriac.exceptions import CeleriacError


@click.group()
def db() -> None:
    """Manage the tables Celeriac keeps in a SQL database."""


@db.command()
@click.option("--json", "as_json", is_flag=True, help="Print what was done as JSON.")
@click.pass_obj
def upgrade(state: object, as_json: bool) -> None:
    """Create or upgrade the tables of the app's PostgreSQL broker and result backend."""
    from celeriac.transports import scheme_of
    from celeriac.transports.postgres.admin import upgrade as upgrade_url
    from celeriac.transports.postgres.connection import SCHEMES, parse_url

    app = state.app  # type: ignore[attr-defined]
    urls = [app.conf.broker_url, app.result_backend_url() or ""]
    seen: set[tuple[str, str]] = set()
    done = []
    try:
        for url in urls:
            if scheme_of(url) not in SCHEMES or parse_url(url) in seen:
                continue
            seen.add(parse_url(url))
            done.append(upgrade_url(url))
    except CeleriacError as exc:
        raise click.ClickException(str(exc)) from exc
    if not done:
        raise click.ClickException("neither broker_url nor result_backend is a postgresql:// URL")
    if as_json:
        click.echo(
            json.dumps(
                [{"url": u.url, "schema": u.schema, "from": u.before, "to": u.after} for u in done]
            )
        )
        return
    for u in done:
        change = "up to date" if u.before == u.after else f"upgraded {u.before} -> {u.after}"
        click.echo(f"{u.url} schema {u.schema}: {change}")
