"""`offload cancel`: stop jobs, or a whole workflow, from a shell.

Goes through `offload.workflow.cancel_jobs` (`Job.cancel` for many, not the bare broker
call), so a cancelled workflow step stops what follows it at once, exactly as in
application code, and a big workflow's waiting jobs are all taken before workers reach
them.
"""

from __future__ import annotations

import asyncio

import click

from offload.brokers.base import JobInfo
from offload.cli.shared import app_from_options, app_option, run_async, url_option
from offload.envelope import JobState
from offload.errors import JobNotFound
from offload.workflow import CANCEL_CONCURRENCY, cancel_jobs


@click.command()
@app_option
@url_option
@click.argument("job_ids", nargs=-1, required=True)
@click.option(
    "--workflow",
    is_flag=True,
    help="Cancel every job of the workflow each ID belongs to (any step's id, or the workflow's).",
)
def cancel(app_spec: str | None, url: str | None, job_ids: tuple[str, ...], workflow: bool) -> None:
    """Cancel jobs: a waiting one never runs (durably, even with no worker running); a
    running one is flagged (an async handler is stopped within a second, a sync one
    runs to completion but starts nothing after it in its workflow)."""
    app = app_from_options(app_spec, url)

    async def go() -> list[tuple[str, str]]:
        broker = await app.connected_broker()
        ids = list(job_ids)
        if workflow:
            ids = []
            for job_id in job_ids:
                info = await broker.get_job(job_id)
                envelope = info.envelope() if info is not None else None
                workflow_id = envelope.workflow_id if envelope and envelope.workflow_id else job_id
                steps = await broker.workflow_jobs(workflow_id, limit=100_000)
                if not steps:
                    raise JobNotFound(job_id, f"no workflow with a job {job_id}")
                ids += [step.id for step in steps]
        ids = list(dict.fromkeys(ids))
        gate = asyncio.Semaphore(CANCEL_CONCURRENCY)

        async def read(job_id: str) -> JobInfo | None:
            async with gate:
                return await broker.get_job(job_id)

        befores = await asyncio.gather(*(read(job_id) for job_id in ids))
        found = [job_id for job_id, before in zip(ids, befores, strict=True) if before]
        taken = await cancel_jobs(app.producer, found)
        report = []
        for job_id, before in zip(ids, befores, strict=True):
            if before is None:
                report.append((job_id, "not found (never enqueued, or purged)"))
            elif job_id in taken:
                flagged = before.state is JobState.RUNNING
                report.append((job_id, "flagged (running)" if flagged else "cancelled"))
            elif not workflow:
                report.append((job_id, f"not cancelled: already {before.state}"))
        return report

    for job_id, outcome in run_async(app, go):
        click.echo(f"{job_id}  {outcome}")
