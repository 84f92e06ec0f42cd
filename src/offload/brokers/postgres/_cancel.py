"""Cancellation of running jobs on PostgreSQL: the flag poll and the final transition."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from offload.brokers.base import Lease
from offload.codec import encode_error
from offload.envelope import ErrorInfo
from offload.errors import LeaseLost

if TYPE_CHECKING:
    from offload.brokers.postgres import PostgresBroker

__all__ = ["cancel_requested", "cancel_running"]


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
