"""Cancellation of running jobs on PostgreSQL (the flag poll and the final transition),
the listing of a workflow's jobs, and a job with its progress."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from typing import TYPE_CHECKING

from offload.brokers.base import JobInfo, Lease
from offload.brokers.postgres import _rows
from offload.codec import decode_value, encode_error
from offload.errors import LeaseLost
from offload.job import ErrorInfo, id_floor

if TYPE_CHECKING:
    from offload.brokers.postgres import PostgresBroker

__all__ = ["cancel_requested", "cancel_running", "get_job", "workflow_jobs"]


async def cancel_requested(broker: PostgresBroker, leases: Sequence[Lease]) -> set[str]:
    if not leases:
        return set()
    rows = await broker._rows("cancel_requested", {"ids": [lease.job_id for lease in leases]})
    return {row["id"] for row in rows}


async def cancel_running(broker: PostgresBroker, lease: Lease, error: ErrorInfo) -> None:
    now = broker.clock.now()
    params = {
        "error": encode_error(error).decode(),
        "now": now,
        "purge_at": now + broker.retention_s,
        "id": lease.job_id,
        "token": lease.token,
        "ends": broker.settings.ends_channel,
    }
    if await broker._rowcount("cancel_running", params) != 1:
        raise LeaseLost(f"lease on job {lease.job_id} is no longer held")
    broker._ends.notify([lease.job_id])


async def workflow_jobs(broker: PostgresBroker, workflow_id: str, limit: int) -> list[JobInfo]:
    params = {"floor": id_floor(workflow_id), "wf": workflow_id, "limit": limit}
    return [_rows.job_info(row) for row in await broker._rows("workflow_jobs", params)]


async def get_job(broker: PostgresBroker, job_id: str) -> JobInfo | None:
    rows = await broker._rows("get_job_with_progress", {"id": job_id})
    if not rows:
        return None
    info = _rows.job_info(rows[0])
    progress = rows[0]["progress"]
    return info if progress is None else replace(info, progress=decode_value(bytes(progress)))
