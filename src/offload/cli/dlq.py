"""`offload dlq list|replay|purge`: the dead-letter queue."""

from __future__ import annotations

import click
from rich.table import Table

from offload.brokers.base import JobInfo
from offload.cli.inspect import cell, fmt_time
from offload.cli.shared import app_from_options, app_option, console, run_async, url_option
from offload.envelope import JobState
from offload.errors import ConfigurationError
from offload.validation import duration


@click.group()
def dlq() -> None:
    """Inspect, replay or purge dead jobs."""


@dlq.command("list")
@app_option
@url_option
@click.option("-q", "--queue", default=None, help="Only this queue.")
@click.option("-n", "--limit", default=50, show_default=True, type=click.IntRange(1))
def list_dead(app_spec: str | None, url: str | None, queue: str | None, limit: int) -> None:
    """Dead jobs, newest first, with the reason each died."""
    app = app_from_options(app_spec, url)

    async def collect() -> list[JobInfo]:
        broker = await app.connected_broker()
        return (await broker.list_jobs(queue=queue, state=JobState.DEAD, limit=limit)).items

    items = run_async(app, collect)
    if not items:
        click.echo("the dead-letter queue is empty")
        return
    table = Table(title="dead-letter queue")
    for column in ("id", "task", "queue", "attempts", "died", "reason"):
        table.add_column(column, overflow="fold")
    for info in items:
        reason = f"{info.error.type}: {info.error.message}" if info.error else "-"
        table.add_row(
            info.id,
            cell(info.task, 80),
            cell(info.queue, 80),
            str(info.attempt),
            fmt_time(info.finished_at),
            cell(reason, 120),
        )
    console().print(table)


def _scope(job_ids: tuple[str, ...], queue: str | None, all_: bool) -> list[str] | None:
    if not job_ids and not queue and not all_:
        raise click.UsageError("name job ids, or --queue Q, or --all")
    return list(job_ids) if job_ids else None


@dlq.command()
@app_option
@url_option
@click.argument("job_ids", nargs=-1)
@click.option("-q", "--queue", default=None, help="Every dead job of this queue.")
@click.option("--all", "all_", is_flag=True, help="Every dead job.")
def replay(
    app_spec: str | None, url: str | None, job_ids: tuple[str, ...], queue: str | None, all_: bool
) -> None:
    """Put dead jobs back on their queue with fresh attempts."""
    ids = _scope(job_ids, queue, all_)
    app = app_from_options(app_spec, url)

    async def go() -> int:
        broker = await app.connected_broker()
        return await broker.replay_dead(queue, ids)

    click.echo(f"replayed {run_async(app, go)} dead jobs")


@dlq.command()
@app_option
@url_option
@click.argument("job_ids", nargs=-1)
@click.option("-q", "--queue", default=None, help="Every dead job of this queue.")
@click.option("--all", "all_", is_flag=True, help="Every dead job.")
@click.option("--older-than", type=float, default=None, callback=lambda _c, _p, v: _age(v),
              help="Only jobs dead at least this many seconds.")  # fmt: skip
@click.option("-y", "--yes", is_flag=True, help="Do not ask for confirmation.")
def purge(
    app_spec: str | None,
    url: str | None,
    job_ids: tuple[str, ...],
    queue: str | None,
    all_: bool,
    older_than: float | None,
    yes: bool,
) -> None:
    """Delete dead jobs for good."""
    ids = _scope(job_ids, queue, all_)
    if not yes:
        click.confirm("delete these dead jobs for good?", abort=True)
    app = app_from_options(app_spec, url)

    async def go() -> int:
        broker = await app.connected_broker()
        return await broker.purge_dead(queue, ids, older_than=older_than)

    click.echo(f"purged {run_async(app, go)} dead jobs")


def _age(value: float | None) -> float | None:
    """`--older-than`: finite seconds, 0 or more. NaN is no age: SQLite binds it as
    NULL, "no cutoff", and `--older-than nan` purged every dead job."""
    try:
        return duration(value, "--older-than")
    except ConfigurationError as exc:
        message = str(exc).removeprefix("--older-than ")
        raise click.BadParameter(message, param_hint="--older-than") from None
