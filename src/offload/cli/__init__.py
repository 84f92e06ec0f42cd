"""The `offload` command line.

Every option has an `OFFLOAD_*` environment twin (shown in `--help`). Errors print
one line on stderr and exit 1; tracebacks are for bugs, not for bad input.
"""

from __future__ import annotations

import sys

import click

from offload.cli.shared import console, env_twin, load_app, need, setup_logging
from offload.errors import OffloadError

__all__ = ["cli", "console", "env_twin", "load_app", "main", "need", "setup_logging"]


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
    from offload.cli.dashboard import dashboard
    from offload.cli.dlq import dlq
    from offload.cli.inspect import jobs, show, status
    from offload.cli.metrics import metrics
    from offload.cli.migrate import migrate
    from offload.cli.operate import pause, pause_schedule, resume, resume_schedule
    from offload.cli.produce import enqueue
    from offload.cli.scheduler import scheduler, schedules
    from offload.cli.worker import worker

    commands = (
        *(worker, status, jobs, show, enqueue, cancel, dlq, migrate, scheduler, schedules),
        *(dashboard, metrics),
    )
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
