"""`offload enqueue`: put a job on the queue from a shell or a cron line."""

from __future__ import annotations

import json
from typing import Any

import click

from offload.cli.shared import app_from_options, app_option, run_async, url_option
from offload.job import Job


def _json(kind: type, value: str | None, option: str) -> Any:
    if value is None:
        return kind()
    try:
        parsed = json.loads(value)
    except json.JSONDecodeError as exc:
        raise click.BadParameter(f"not valid JSON: {exc}", param_hint=option) from exc
    if not isinstance(parsed, kind):
        raise click.BadParameter(f"must be a JSON {kind.__name__}", param_hint=option)
    return parsed


@click.command()
@app_option
@url_option
@click.argument("task_name")
@click.option("--args", "args_json", help="Positional arguments as a JSON array: '[\"a\", 1]'.")
@click.option("--kwargs", "kwargs_json", help="Keyword arguments as a JSON object: '{\"a\": 1}'.")
@click.option("--queue", default=None, help="Queue (default: the task's, else 'default').")
@click.option("--priority", type=int, default=None, help="Higher runs first.")
@click.option("--delay", type=float, default=None, help="Run no earlier than this many seconds.")
@click.option("--expires", type=float, default=None, help="Never run if not started in time (s).")
@click.option("--key", default=None, help="Idempotency key: a duplicate returns the first job.")
@click.option("--max-attempts", type=click.IntRange(1), default=None)
def enqueue(
    app_spec: str | None,
    url: str | None,
    task_name: str,
    args_json: str | None,
    kwargs_json: str | None,
    queue: str | None,
    priority: int | None,
    delay: float | None,
    expires: float | None,
    key: str | None,
    max_attempts: int | None,
) -> None:
    """Enqueue a job of TASK_NAME and print its id.

    The task need not be importable here: producers may live in other services.
    """
    args = _json(list, args_json, "--args")
    kwargs = _json(dict, kwargs_json, "--kwargs")
    app = app_from_options(app_spec, url, create=True)
    enqueuer = app.options(
        task_name,
        queue=queue,
        priority=priority,
        delay=delay,
        expires=expires,
        key=key,
        max_attempts=max_attempts,
    )

    async def go() -> Job:
        return await enqueuer.enqueue_async(*args, **kwargs)

    job = run_async(app, go)
    suffix = "" if job.created else "  (existing job with this key)"
    click.echo(f"{job.id}{suffix}")
    if app_spec and task_name not in app.tasks:
        # Enqueued all the same (its worker may live elsewhere), but a typo would be
        # buried as an unknown task by every worker of this app, silently until then.
        known = ", ".join(sorted(app.tasks)) or "none"
        click.echo(
            f"note: {app_spec} declares no task {task_name!r} (its tasks: {known})", err=True
        )
