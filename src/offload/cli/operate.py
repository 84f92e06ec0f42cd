"""`offload pause` / `offload resume` (queues), `offload schedules pause|resume`.

Durable and fleet-wide (`offload.pausing`): the flag lives in the broker, every worker
stops reserving from a paused queue within about a second, and it stays paused across
worker restarts until resumed.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import click

from offload.app import Offload
from offload.cli.shared import app_from_options, app_option, run_async, url_option

__all__ = ["pause", "pause_schedule", "resume", "resume_schedule"]


def _apply(
    app_spec: str | None,
    url: str | None,
    names: tuple[str, ...],
    action: Callable[[Offload, str], Awaitable[bool]],
    done: str,
    already: str,
    seen: Callable[[Offload], Awaitable[list[str]]] | None = None,
    unknown: str = "note: no job has used queue {name!r} yet (queues seen: {listed})",
) -> None:
    """Apply `action` to each name and say what it did; with `seen` (the names in use),
    note on stderr each name not among them: it is acted on all the same (a queue's
    jobs may come later), but a typo would pause nothing that runs."""
    app = app_from_options(app_spec, url)

    async def go() -> tuple[list[bool], list[str] | None]:
        changed = [await action(app, name) for name in names]
        return changed, (await seen(app) if seen is not None else None)

    changed, known = run_async(app, go)
    for name, ok in zip(names, changed, strict=True):
        click.echo(f"{name}: {done if ok else already}")
    if known is None:
        return
    listed = ", ".join(sorted(known)) or "none"
    for name in [n for n in names if n not in known]:
        click.echo(unknown.format(name=name, listed=listed), err=True)


async def _queues(app: Offload) -> list[str]:
    return await (await app.connected_broker()).queues()


async def _schedules(app: Offload) -> list[str]:
    return list(app.schedules)


@click.command()
@app_option
@url_option
@click.argument("queues", nargs=-1, required=True)
def pause(app_spec: str | None, url: str | None, queues: tuple[str, ...]) -> None:
    """Pause QUEUES: workers stop taking their jobs (within a second), enqueues are
    still accepted, and the jobs wait until `offload resume`. Survives restarts."""
    _apply(app_spec, url, queues, Offload.pause_async, "paused", "was paused already", _queues)


@click.command()
@app_option
@url_option
@click.argument("queues", nargs=-1, required=True)
def resume(app_spec: str | None, url: str | None, queues: tuple[str, ...]) -> None:
    """Resume paused QUEUES: workers take their jobs again."""
    _apply(app_spec, url, queues, Offload.resume_async, "resumed", "was not paused")


@click.command("pause")
@app_option
@url_option
@click.argument("schedule_ids", metavar="SCHEDULES", nargs=-1, required=True)
def pause_schedule(app_spec: str | None, url: str | None, schedule_ids: tuple[str, ...]) -> None:
    """Pause SCHEDULES: no scheduler fires them until resumed (ticks in between are
    skipped, not caught up)."""
    action = Offload.pause_schedule_async
    # With --app the schedules are known: a typo'd id would pause nothing that fires.
    seen = _schedules if app_spec else None
    note = "note: {name!r} is not a schedule of " + f"{app_spec} (its schedules: {{listed}})"
    _apply(app_spec, url, schedule_ids, action, "paused", "was paused already", seen, note)


@click.command("resume")
@app_option
@url_option
@click.argument("schedule_ids", metavar="SCHEDULES", nargs=-1, required=True)
def resume_schedule(app_spec: str | None, url: str | None, schedule_ids: tuple[str, ...]) -> None:
    """Resume paused SCHEDULES: they fire again from their next tick."""
    action = Offload.resume_schedule_async
    _apply(app_spec, url, schedule_ids, action, "resumed", "was not paused")
