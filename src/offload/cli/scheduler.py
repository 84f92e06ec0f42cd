"""`offload scheduler` (enqueue recurring jobs) and `offload schedules` (list them)."""

from __future__ import annotations

import asyncio
import json
import logging
import signal
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import click
from rich.table import Table

from offload.app import Offload
from offload.cli.shared import console, env_twin, load_app, run_async, setup_logging
from offload.errors import OffloadError
from offload.schedule import ScheduleEntry
from offload.scheduler import Scheduler

__all__ = ["scheduler", "schedules"]

logger = logging.getLogger("offload.cli")


@click.command()
@click.argument("app_spec", metavar="MODULE:APP", envvar="OFFLOAD_APP")
@click.option("--log-level", default="info", **env_twin("LOG_LEVEL"),
              type=click.Choice(["debug", "info", "warning", "error"]))  # fmt: skip
@click.option("--log-format", default="text", **env_twin("LOG_FORMAT"),
              type=click.Choice(["text", "json"]), help="json: one object per line.")  # fmt: skip
def scheduler(app_spec: str, log_level: str, log_format: str) -> None:
    """Enqueue the schedules of MODULE:APP until SIGTERM or Ctrl-C.

    Run as many as you like: each fire is enqueued once, by key, with no leader.
    """
    setup_logging(log_level, log_format)
    app = load_app(app_spec)
    if not app.schedules:
        logger.warning("%s declares no schedules; nothing to do", app_spec)
    asyncio.run(_run(Scheduler(app)))


async def _run(s: Scheduler) -> None:
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, s.stop)
    try:
        await s.run()
    finally:
        await s.producer.aclose()


class _Schedules(click.Group):
    """`offload schedules MODULE:APP` lists (as it always did); `offload schedules
    pause|resume ID` steers (`cli/operate.py`)."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        if not args or (args[0] not in self.commands and args[0] not in ("--help", "-h")):
            args = ["list", *args]
        return super().parse_args(ctx, args)


@click.group(cls=_Schedules)
def schedules() -> None:
    """List schedules (`offload schedules MODULE:APP`), or pause and resume them."""


@schedules.command("list")
@click.argument("app_spec", metavar="MODULE:APP", envvar="OFFLOAD_APP")
@click.option("-n", "--next", "count", default=3, type=click.IntRange(1, 100),
              **env_twin("SCHEDULES_NEXT"), help="Next fire times to show.")  # fmt: skip
@click.option("--json", "as_json", is_flag=True, envvar="OFFLOAD_SCHEDULES_JSON",
              show_envvar=True, help="One JSON object per schedule.")  # fmt: skip
def list_schedules(app_spec: str, count: int, as_json: bool) -> None:
    """List the schedules of MODULE:APP with their next fire times."""
    app = load_app(app_spec)
    now = app.clock.now()
    paused = _paused(app) if app.schedules else {}
    rows = [_row(entry, now, count, paused.get(entry.id)) for entry in app.schedules.values()]
    if as_json:
        for row in rows:
            click.echo(json.dumps(row))
        return
    out = console()
    if not rows:
        out.print("no schedules")
        return
    table = Table("id", "task", "schedule", "tz", "next fires", "policies")
    for row in rows:
        policies = (
            f"overlap={row['overlap']} misfire={row['misfire']} "
            f"catch-up<={row['max_catch_up']} grace={row['grace_s']:g}s"
        )
        fires = "\n".join(row["next_local"])
        if row["paused_at"] is not None:
            since = datetime.fromtimestamp(row["paused_at"]).strftime("%Y-%m-%d %H:%M:%S")
            fires = f"none: paused since {since}"
        table.add_row(row["id"], row["task"], row["schedule"], row["tz"], fires, policies)
    out.print(table)


def _paused(app: Offload) -> dict[str, float]:
    """The app's paused schedules (`offload schedules pause`), each with the time of its
    pause: the next fires listed for one of them do not happen until it is resumed.

    Read from the broker; one that cannot say (no store yet, no state store, down) is
    noted on stderr and the list is shown without pauses rather than not at all."""
    for part in (app.broker, getattr(app.broker, "inspection", None)):
        path = getattr(part, "path", None)
        if isinstance(path, Path) and not path.exists():
            return {}  # no database yet, so nothing paused (and none created by a list)
    try:
        return dict(run_async(app, app.paused_async).schedules)
    except OffloadError as exc:
        click.echo(f"note: paused schedules not known ({exc})", err=True)
        return {}


def _row(entry: ScheduleEntry, now: float, count: int, paused_at: float | None) -> dict[str, Any]:
    zone = ZoneInfo(entry.schedule.tz)
    fires = entry.schedule.next_fires(now, count)
    return {
        "id": entry.id,
        "paused_at": paused_at,
        "task": entry.task,
        "schedule": entry.schedule.describe(),
        "tz": entry.schedule.tz,
        "next": [datetime.fromtimestamp(f, UTC).isoformat() for f in fires],
        "next_local": [datetime.fromtimestamp(f, zone).isoformat(" ") for f in fires],
        "overlap": entry.overlap,
        "misfire": entry.misfire,
        "max_catch_up": entry.max_catch_up,
        "grace_s": entry.grace_s,
    }
