"""`offload demo`: the sign-up story, end to end, on this machine.

Importing this module needs nothing beyond the core; the demo's own dependencies
(Starlette, uvicorn, aiosmtpd, httpx) are imported when the command runs, and a
missing one is reported as the extra to install.
"""

from __future__ import annotations

import sys

import click

from offload.cli.shared import env_twin

__all__ = ["demo"]


@click.command()
@click.option("--signups", default=300, type=click.IntRange(1), **env_twin("DEMO_SIGNUPS"),
              help="Sign-ups to drive over HTTP.")  # fmt: skip
@click.option("--rate", default=100.0, type=click.FloatRange(0.1), **env_twin("DEMO_RATE"),
              help="Sign-ups started per second (at most 20 in flight).")  # fmt: skip
@click.option("--workers", default=2, type=click.IntRange(1), **env_twin("DEMO_WORKERS"),
              help="Worker processes.")  # fmt: skip
@click.option("--concurrency", default=20, type=click.IntRange(1), **env_twin("DEMO_CONCURRENCY"),
              help="Jobs run at once per worker process.")  # fmt: skip
@click.option("--smtp-delay", default=0.25, type=click.FloatRange(0), **env_twin("DEMO_SMTP_DELAY"),
              help="Seconds the SMTP server takes per message (a slow provider).")  # fmt: skip
@click.option("--failure-rate", default=0.2, type=click.FloatRange(0, 1),
              **env_twin("DEMO_FAILURE_RATE"),
              help="Fraction of messages the SMTP server refuses with a 451.")  # fmt: skip
@click.option("--url", default=None, **env_twin("DEMO_URL"),
              help="Broker URL (default: a SQLite file in a new temporary directory).")  # fmt: skip
@click.option("--serve", is_flag=True, envvar="OFFLOAD_DEMO_SERVE", show_envvar=True,
              help="No load: serve a sign-up page, inbox and dashboard until Ctrl-C.")  # fmt: skip
@click.option("--timeout", default=300.0, type=click.FloatRange(1), **env_twin("DEMO_TIMEOUT"),
              help="Seconds to wait for every email before giving up.")  # fmt: skip
def demo(
    signups: int,
    rate: float,
    workers: int,
    concurrency: int,
    smtp_delay: float,
    failure_rate: float,
    url: str | None,
    serve: bool,
    timeout: float,
) -> None:
    """Run the sign-up demo: a web app that answers at once, workers that email.

    Starts a local SMTP server (slow and flaky on purpose), the sign-up web app and
    the workers, drives sign-ups over HTTP, shows the emails going out, and prints
    the sign-up latency beside the SMTP delay, with the delivery accounting. Exits 0
    only if every email was delivered exactly once. The web app also serves the
    dashboard (its URL and sign-in token are printed).

    With --serve: no load; sign up by hand on the printed page, read the email in the
    inbox page, and watch its job fail, retry and succeed on the dashboard, until
    Ctrl-C or SIGTERM stops every part.
    """
    try:
        from offload.demo.run import DemoError, run_demo, serve_demo
    except ImportError as exc:
        raise click.ClickException(
            f"the demo needs its extra: pip install 'offload[demo]' ({exc})"
        ) from exc
    if serve:
        try:
            signalled = serve_demo(
                workers=workers, concurrency=concurrency, smtp_delay=smtp_delay, url=url
            )
        except DemoError as exc:
            raise click.ClickException(str(exc)) from exc
        click.echo(f"stopped by {signalled}; every part was stopped", err=True)
        return
    try:
        summary = run_demo(
            signups=signups,
            rate=rate,
            workers=workers,
            concurrency=concurrency,
            smtp_delay=smtp_delay,
            failure_rate=failure_rate,
            url=url,
            timeout=timeout,
        )
    except DemoError as exc:
        raise click.ClickException(str(exc)) from exc
    sys.exit(0 if summary.ok else 1)
