"""`offload migrate`: create or upgrade the broker's schema before workers start.

Workers migrate on connect too (under an advisory lock, so many can start at once);
this command is for deployments that run schema changes as a separate step, with a
role allowed to run DDL.
"""

from __future__ import annotations

import asyncio
from urllib.parse import urlsplit

import click

from offload._redact import redact_url
from offload.app import DEFAULT_URL
from offload.brokers import from_url
from offload.cli.shared import url_option


@click.command()
@url_option
def migrate(url: str | None) -> None:
    """Create or upgrade the broker's schema (PostgreSQL); other brokers need none."""
    broker = from_url(url or DEFAULT_URL)
    if urlsplit(broker.url).scheme.lower() not in ("postgresql", "postgres"):
        click.echo(
            f"{redact_url(broker.url)}: nothing to migrate (this broker installs its schema itself)"
        )
        return
    from offload.brokers.postgres import PostgresBroker  # imported by from_url already

    assert isinstance(broker, PostgresBroker)
    version, applied = asyncio.run(broker.migrate())
    if applied:
        done = ", ".join(f"{v:04d}" for v in applied)
        click.echo(f"applied migrations {done}; schema is at version {version}")
    else:
        click.echo(f"schema is up to date (version {version})")
