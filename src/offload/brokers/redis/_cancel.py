"""Cancellation of running jobs on Redis: the flag poll (one HMGET of the job records
per queue, in one pipeline) and the final transition (`cancel_running.lua`)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import msgspec

from offload.brokers.base import Lease
from offload.brokers.redis._records import num
from offload.codec import encode_error
from offload.envelope import ErrorInfo
from offload.errors import LeaseLost

if TYPE_CHECKING:
    from offload.brokers.redis import RedisBroker

__all__ = ["cancel_requested", "cancel_running"]


async def cancel_requested(broker: RedisBroker, leases: Sequence[Lease]) -> set[str]:
    by_queue: dict[str, list[str]] = {}
    for lease in leases:
        by_queue.setdefault(lease.queue, []).append(lease.job_id)
    commands = [("HMGET", broker._q(q).record, *ids) for q, ids in by_queue.items()]
    replies = await broker._commands(commands)
    flagged: set[str] = set()
    for ids, records in zip(by_queue.values(), replies, strict=True):
        for job_id, raw in zip(ids, records, strict=True):
            record = msgspec.msgpack.decode(raw) if raw else {}
            if record.get("s") in ("running", b"running") and record.get("cx"):
                flagged.add(job_id)
    return flagged


async def cancel_running(broker: RedisBroker, lease: Lease, error: ErrorInfo) -> None:
    now = broker.clock.now()
    args = [
        num(now),
        lease.job_id,
        lease.token,
        encode_error(error).decode(),
        num(now + broker.retention_s),
        broker._ended_channel,
    ]
    if not await broker._run("cancel_running", broker._q(lease.queue), args):
        raise LeaseLost(f"lease on job {lease.job_id} is no longer held")
