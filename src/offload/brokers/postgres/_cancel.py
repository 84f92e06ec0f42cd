"""Cancellation of running jobs on PostgreSQL: the flag poll and the final transition."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from offload.brokers.base import Lease

if TYPE_CHECKING:
    from offload.brokers.postgres import PostgresBroker

__all__ = ["cancel_requested"]


async def cancel_requested(broker: PostgresBroker, leases: Sequence[Lease]) -> set[str]:
    if not leases:
        return set()
    rows = await broker._rows("cancel_requested", {"ids": [lease.job_id for lease in leases]})
    return {row["id"] for row in rows}
