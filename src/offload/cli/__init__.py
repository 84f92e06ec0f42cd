"""The `offload` command line.

Every option has an `OFFLOAD_*` environment twin (shown in `--help`). Errors print
one line on stderr and exit 1; tracebacks are for bugs, not for bad input.
"""

from __future__ import annotations

import importlib
import logging
import os
import sys
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any, TypeVar

import click
from rich.console import Console

from offload._redact import RedactingFormatter
from offload.app import Offload
from offload.errors import OffloadError

__all__ = ["cli", "console", "env_twin", "load_app", "main"]

T = TypeVar("T")


def load_app(spec: str) -> Offload:
    """Import `MODULE:ATTR` and return the `Offload` app it names.

    The working directory is put on `sys.path` first, as uvicorn and gunicorn do, so
    `offload worker myapp:app` finds `./myapp.py`.

    Raises:
        click.BadParameter: the spec is malformed, the import fails, or the object is
            not an `Offload` app.
    """
    module_name, _, attr = spec.partition(":")
    if not module_name or not attr:
        raise click.BadParameter(f"expected MODULE:APP, e.g. myapp.tasks:app, got {spec!r}")
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise click.BadParameter(f"cannot import {module_name!r}: {exc}") from exc
    obj: Any = module
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise click.BadParameter(f"module {module_name!r} has no attribute {attr!r}")
        obj = getattr(obj, part)
    if not isinstance(obj, Offload):
        raise click.BadParameter(f"{spec!r} is a {type(obj).__name__}, not an Offload app")
    return obj


def app_from_options(app_spec: str | None, url: str | None, *, create: bool = False) -> Offload:
    """The app to inspect: the one named by --app, else a bare one on --url.

    Raises:
        click.ClickException: unless `create`, the broker is a SQLite file that does
            not exist: a command that reads or steers jobs must not create an empty
            database (and its directories) for a mistyped path and report it empty.
    """
    app = load_app(app_spec) if app_spec else Offload(url)
    path = getattr(app.broker, "path", None)
    if not create and isinstance(path, Path) and not path.exists():
        raise click.ClickException(
            f"no such database: {path} (check --url or OFFLOAD_URL; "
            "a worker or an enqueue creates it)"
        )
    return app


def run_async(app: Offload, make: Callable[[], Coroutine[Any, Any, T]]) -> T:
    """Run an async CLI action against `app`'s broker, closing it afterwards."""
    import asyncio

    # The value leaves through `box`, not as the task's result: on Python 3.11,
    # asyncio.run's exit reprs its main task (through signal.getsignal), result and all,
    # and the repr of jobs holding megabytes took seconds to minutes.
    box: list[T] = []

    async def runner() -> None:
        try:
            box.append(await make())
        finally:
            await app.aclose()

    asyncio.run(runner())
    return box[0]


def console() -> Console:
    """A rich console; when output is piped, wide enough that ids are never folded."""
    return Console(width=None if sys.stdout.isatty() else 200)


def env_twin(name: str) -> dict[str, Any]:
    """click.option keywords naming an option's `OFFLOAD_<NAME>` environment twin and
    showing it, with the default, in `--help`."""
    return {"envvar": f"OFFLOAD_{name}", "show_envvar": True, "show_default": True}


def setup_logging(level: str, fmt: str = "text") -> None:
    """Logs to stderr: human-readable text, or one JSON object per line."""
    handler = logging.StreamHandler(sys.stderr)
    formatter: logging.Formatter
    if fmt == "json":
        from offload.logging import JsonFormatter

        formatter = JsonFormatter()
    else:
        formatter = logging.Formatter("%(asctime)s %(levelname)-7s %(name)s: %(message)s")
    handler.setFormatter(RedactingFormatter(formatter))
    logging.basicConfig(level=level.upper(), handlers=[handler])


app_option = click.option(
    "--app",
    "app_spec",
    envvar="OFFLOAD_APP",
    show_envvar=True,
    metavar="MODULE:APP",
    help="Offload app whose broker to use (default: a bare app on --url).",
)
url_option = click.option(
    "--url",
    envvar="OFFLOAD_URL",
    show_envvar=True,
    help="Broker URL (default: sqlite:///offload.db).",
)


@click.group(
    context_settings={
        "help_option_names": ["-h", "--help"],
        "max_content_width": 100,
        # Options without a named twin read OFFLOAD_<COMMAND>_<OPTION>, e.g.
        # OFFLOAD_JOBS_LIMIT or OFFLOAD_DLQ_PURGE_OLDER_THAN.
        "auto_envvar_prefix": "OFFLOAD",
    }
)
@click.version_option(package_name="offload")
def cli() -> None:
    """offload: background jobs that are never lost."""


def _register() -> None:
    from offload.cli.cancel import cancel
    from offload.cli.dlq import dlq
    from offload.cli.inspect import jobs, show, status
    from offload.cli.migrate import migrate
    from offload.cli.operate import pause, pause_schedule, resume, resume_schedule
    from offload.cli.produce import enqueue
    from offload.cli.scheduler import scheduler, schedules
    from offload.cli.worker import worker

    commands = (worker, status, jobs, show, enqueue, cancel, dlq, migrate, scheduler, schedules)
    for command in (*commands, pause, resume):
        cli.add_command(command)
    schedules.add_command(pause_schedule)
    schedules.add_command(resume_schedule)
    try:
        from offload.cli.demo import demo
    except ImportError:  # the demo's extras are not installed
        return
    cli.add_command(demo)


_register()


def main() -> None:
    """Entry point: run the CLI, turning offload errors into one line on stderr."""
    try:
        cli.main(standalone_mode=False)
    except click.exceptions.Abort:
        click.echo("aborted", err=True)
        sys.exit(1)
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except click.exceptions.Exit as exc:
        sys.exit(exc.exit_code)
    except OffloadError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(1)
