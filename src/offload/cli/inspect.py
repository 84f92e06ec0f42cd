"""`offload status`, `offload jobs`, `offload show`: what is queued, running, dead, and why.

Built only on the public `Broker` inspection API, so it works on every broker.
"""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime
from typing import Any

import click
import msgspec
from rich.console import Console
from rich.table import Table
from rich.text import Text

from offload import pausing
from offload._redact import redact_url
from offload.attempts import job_with_history
from offload.brokers.base import JobInfo, WorkerInfo
from offload.cli import workflow_tree
from offload.cli.shared import app_from_options, app_option, console, run_async, url_option
from offload.codec import dumps_pretty
from offload.envelope import JobState, clip
from offload.errors import ConfigurationError, JobNotFound
from offload.pausing import Paused

#: Most characters a table cell shows of one value (arguments, result, error, key):
#: rich lays text out in time that grows faster than its length, and nobody reads
#: megabytes in a terminal; `--json` prints every value whole.
CELL_MAX = 4096

STATE_COLUMNS = [
    JobState.QUEUED,
    JobState.SCHEDULED,
    JobState.RUNNING,
    JobState.SUCCEEDED,
    JobState.DEAD,
    JobState.EXPIRED,
    JobState.CANCELLED,
]


def fmt_time(ts: float | None) -> str:
    if ts is None:
        return "-"
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%d %H:%M:%S")


def fmt_age(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds / size:.1f}{unit}"
    return f"{seconds:.1f}s"


@click.command()
@app_option
@url_option
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
@click.option(
    "-q",
    "--queue",
    "queues",
    multiple=True,
    help="Only this queue (repeatable); names queues a broker cannot list (amqp:// alone).",
)
def status(app_spec: str | None, url: str | None, as_json: bool, queues: tuple[str, ...]) -> None:
    """Jobs per queue and state, the age of the oldest queued job, and live workers."""
    app = app_from_options(app_spec, url)

    async def collect() -> tuple[dict[str, Any], list[WorkerInfo] | None, Paused]:
        broker = await app.connected_broker()
        counts = await broker.counts(list(queues) or None)
        try:
            workers: list[WorkerInfo] | None = await broker.workers()
        except ConfigurationError:  # a delivery without a state store keeps no registry
            workers = None
        return counts, workers, await pausing.paused(broker)

    counts, workers, paused = run_async(app, collect)
    now = time.time()
    if as_json:
        data = {
            "queues": {
                q: {
                    **{s.value: n for s, n in stats.states.items()},
                    "oldest_queued_age_s": (
                        None if stats.oldest_queued_at is None else now - stats.oldest_queued_at
                    ),
                }
                for q, stats in counts.items()
            },
            "workers": None
            if workers is None
            else [
                {  # every column of the table (a script needs "last seen" most)
                    "id": w.id,
                    "queues": w.queues,
                    "concurrency": w.concurrency,
                    "last_seen": w.last_seen,
                    "running": w.running,
                    "processed": w.processed,
                    "last_reserve_at": w.last_reserve_at,
                    "running_jobs": w.running_jobs,
                }
                for w in workers
            ],
            "paused_queues": paused.queues,
            "paused_schedules": paused.schedules,
        }
        click.echo(json.dumps(data, indent=2))
        return
    table = Table(title=f"offload status — {redact_url(app.broker.url)}")
    table.add_column("queue")
    for state in STATE_COLUMNS:
        table.add_column(state.value, justify="right")
    table.add_column("oldest queued", justify="right")
    for queue, stats in counts.items():
        oldest = None if stats.oldest_queued_at is None else now - stats.oldest_queued_at
        # A queue alone (no store: no registry either) counts only some states; the
        # others show "-", not a 0 that reads as "nothing running, nothing waiting".
        states = (
            "-" if workers is None and s not in stats.states else str(stats.states.get(s, 0))
            for s in STATE_COLUMNS
        )
        name = f"{queue} (paused)" if queue in paused.queues else queue
        table.add_row(cell(name, 80), *states, fmt_age(oldest))
    out = console()
    out.print(table)
    for kind, held in (("queues", paused.queues), ("schedules", paused.schedules)):
        if held:
            since = ", ".join(f"{n} (since {fmt_time(t)})" for n, t in sorted(held.items()))
            out.print(Text(f"paused {kind}: {since}"))
    if workers is None:
        out.print("workers: not known (this broker keeps no registry without a state store)")
    elif workers:
        out.print(_workers_table(workers, now))
    else:
        out.print("no live workers")


def _workers_table(workers: list[WorkerInfo], now: float) -> Table:
    """Live workers, with when each last got an answer from `reserve` (a worker that
    is alive but not consuming shows an old one) and the jobs it runs."""
    wt = Table(title="workers")
    columns = ("id", "queues", "concurrency", "running", "processed", "last seen")
    for column in (*columns, "last reserve", "running jobs"):
        wt.add_column(column)
    for w in workers:
        last = w.last_reserve_at
        wt.add_row(
            cell(w.id, 80),
            cell(",".join(w.queues), 80),
            str(w.concurrency),
            str(w.running),
            str(w.processed),
            fmt_age(now - w.last_seen) + " ago",
            "-" if last is None else fmt_age(max(now - last, 0.0)) + " ago",
            cell(" ".join(w.running_jobs), 400),
        )
    return wt


@click.command()
@app_option
@url_option
@click.option("-q", "--queue", default=None, help="Only this queue.")
@click.option(
    "-s", "--state", type=click.Choice([s.value for s in JobState]), help="Only this state."
)
@click.option("-n", "--limit", default=20, show_default=True, type=click.IntRange(1))
@click.option("--json", "as_json", is_flag=True, help="Print JSON lines instead of a table.")
def jobs(
    app_spec: str | None,
    url: str | None,
    queue: str | None,
    state: str | None,
    limit: int,
    as_json: bool,
) -> None:
    """List jobs, newest first."""
    app = app_from_options(app_spec, url)

    async def collect() -> list[JobInfo]:
        broker = await app.connected_broker()
        page = await broker.list_jobs(
            queue=queue, state=JobState(state) if state else None, limit=limit
        )
        return page.items

    items = run_async(app, collect)
    if as_json:
        for info in items:
            click.echo(json.dumps(job_summary(info)))
        return
    table = Table()
    for column in ("id", "task", "queue", "state", "attempt", "created", "error"):
        table.add_column(column, overflow="fold")
    for info in items:
        error = f"{info.error.type}: {info.error.message}" if info.error else ""
        table.add_row(
            info.id,
            cell(info.task, 80),
            cell(info.queue, 80),
            info.state.value,
            f"{info.attempt}/{info.max_attempts or '?'}",
            fmt_time(info.created_at),
            cell(error, 80),
        )
    console().print(table)


def cell(text: str, limit: int = CELL_MAX) -> Text:
    """`text` cut to `limit` characters, as plain text: never read as rich markup (an
    error message holding `[/x]` would otherwise break the table)."""
    return Text(text if len(text) <= limit else text[: limit - 1] + "…")


def json_text(value: Any) -> str:
    """Indented JSON of a value, or compact JSON when it is too long to show whole
    (measured on msgspec's fast encoding: indenting megabytes takes seconds)."""
    compact = msgspec.json.encode(value, enc_hook=str)
    return compact.decode() if len(compact) > CELL_MAX else dumps_pretty(value)


def job_summary(info: JobInfo) -> dict[str, Any]:
    envelope = info.envelope()
    return {
        "id": info.id,
        "task": info.task,
        "queue": info.queue,
        "state": info.state.value,
        "priority": info.priority,
        "attempt": info.attempt,
        "max_attempts": info.max_attempts,
        "key": info.key,
        "created_at": info.created_at,
        "due_at": info.due_at,
        "expires_at": info.expires_at,
        "started_at": info.started_at,
        "finished_at": info.finished_at,
        "worker_id": info.worker_id,
        "args": envelope.args if envelope else None,
        "kwargs": envelope.kwargs if envelope else None,
        "error": None
        if info.error is None
        else {
            "type": info.error.type,
            "type_path": info.error.type_path,
            "message": info.error.message,
        },
        "result": _result(info),
        "progress": info.progress,
    }


def _result(info: JobInfo) -> Any:
    """The decoded result of a succeeded job; a corrupt one is shown, not raised."""
    if info.state is not JobState.SUCCEEDED:
        return None
    try:
        return info.result_value()
    except msgspec.DecodeError:
        return f"<undecodable result: {(info.result or b'')[:200]!r}>"


@click.command()
@app_option
@url_option
@click.argument("job_id")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def show(app_spec: str | None, url: str | None, job_id: str, as_json: bool) -> None:
    """Everything about one job: arguments, state, attempts, error and traceback, result."""
    app = app_from_options(app_spec, url)

    async def collect() -> tuple[JobInfo | None, str | None, list[JobInfo]]:
        broker = await app.connected_broker()
        info = await job_with_history(broker, job_id)
        envelope = info.envelope() if info is not None else None
        workflow_id = envelope.workflow_id if envelope is not None else job_id
        steps = await broker.workflow_jobs(workflow_id) if workflow_id else []
        return info, workflow_id, steps

    info, workflow_id, steps = run_async(app, collect)
    tree = workflow_tree.build(workflow_id, steps) if workflow_id and steps else None
    if info is None:
        if tree is None:
            raise JobNotFound(job_id, f"no job {job_id} (never enqueued, or purged)")
        _show_tree(tree, as_json)
        return
    summary = job_summary(info)
    if as_json:
        summary["traceback"] = info.error.traceback if info.error else None
        summary["attempts"] = msgspec.to_builtins(info.attempts)
        summary["attempts_dropped"] = info.attempts_dropped
        if tree is not None:
            summary["workflow"] = workflow_tree.to_json(tree)
        click.echo(json.dumps(summary, indent=2))
        return
    out = console()
    _print_job(out, info, summary)
    if tree is not None:
        out.print(f"workflow {workflow_id}")
        out.print(workflow_tree.render(tree))


def _print_job(out: Console, info: JobInfo, summary: dict[str, Any]) -> None:
    """The job as a table, then its traceback; long values are `clip`ped."""
    table = Table(show_header=False, title=f"job {info.id}")
    cut = False
    for name, value in summary.items():
        if name.endswith("_at"):
            value = fmt_time(value)
        elif name in ("args", "kwargs", "result", "error", "progress"):
            value = json_text(value)
        text = "-" if value is None else str(value)
        cut = cut or len(text) > CELL_MAX
        table.add_row(name, Text(clip(text, CELL_MAX)))
    out.print(table)
    if info.envelope() is None:
        out.print(Text(f"payload is not a valid envelope: {info.payload[:200]!r}", style="red"))
    if info.attempts:
        out.print(_attempts_table(info))
    if info.error and info.error.traceback:
        out.print(info.error.traceback, markup=False, highlight=False)  # bounded: ErrorInfo
    if cut:
        out.print("[dim]long values are cut for display; --json prints them whole[/dim]")


def _attempts_table(info: JobInfo) -> Table:
    """One row per attempt (`offload.attempts`): when, where, and how it ended."""
    title = "attempts"
    if info.attempts_dropped:
        title += f" ({info.attempts_dropped} older ones not kept)"
    table = Table(title=title)
    for column in ("#", "outcome", "worker", "started", "took", "error"):
        table.add_column(column, overflow="fold")
    for a in info.attempts:
        took = None
        if a.started_at is not None and a.finished_at is not None:
            took = max(a.finished_at - a.started_at, 0.0)
        error = "" if a.error is None else f"{a.error.type_path or a.error.type}: {a.error.message}"
        table.add_row(
            str(a.number),
            a.outcome.value,
            cell(a.worker_id or "-", 80),
            fmt_time(a.started_at),
            fmt_age(took),
            cell(error, 200),
        )
    return table


def _show_tree(tree: workflow_tree.Node, as_json: bool) -> None:
    if as_json:
        click.echo(json.dumps({"workflow": workflow_tree.to_json(tree)}, indent=2))
    else:
        console().print(workflow_tree.render(tree))
