"""A workflow's jobs on Redis (`Broker.workflow_jobs`).

Jobs live in per-queue keys, so a workflow that spans queues has an index of its own:
the set `P:{%wf:<workflow id>}:jobs` of JSON `[queue, job id]` members, hash-tagged by
the workflow (cluster-safe: one slot, one command). `enqueue` adds to it *before* its
scripts run, so the index may name a job that was refused (listing skips those) but
never misses a stored one; it lapses after the broker's retention.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from offload.brokers.base import JobInfo
from offload.brokers.redis import keys as K
from offload.brokers.redis._records import job_info
from offload.envelope import Envelope

if TYPE_CHECKING:
    from offload.brokers.redis import RedisBroker

__all__ = ["index", "workflow_jobs"]


async def index(broker: RedisBroker, jobs: Sequence[tuple[Envelope, bytes]]) -> None:
    members: dict[str, list[str]] = {}
    for envelope, _ in jobs:
        if envelope.workflow_id is not None:
            member = json.dumps([envelope.queue, envelope.id])
            members.setdefault(envelope.workflow_id, []).append(member)
    if not members:
        return
    ttl_ms = str(math.ceil(broker.retention_s * 1000))
    commands: list[tuple[Any, ...]] = []
    for workflow_id, found in members.items():
        key = K.workflow_key(broker.prefix, workflow_id)
        commands += [("SADD", key, *found), ("PEXPIRE", key, ttl_ms)]
    await broker._commands(commands)


async def workflow_jobs(broker: RedisBroker, workflow_id: str, limit: int) -> list[JobInfo]:
    key = K.workflow_key(broker.prefix, workflow_id)
    [members] = await broker._commands([("SMEMBERS", key)])
    pairs = [tuple(json.loads(m)) for m in members]
    commands: list[tuple[Any, ...]] = []
    for queue, job_id in pairs:
        q = broker._q(queue)
        commands += [("HGET", q.record, job_id), ("HGET", q.payload, job_id)]
        commands.append(("HGET", q.result, job_id))
    replies = await broker._commands(commands)
    found = [
        job_info(job_id, queue, *replies[3 * n : 3 * n + 3])
        for n, (queue, job_id) in enumerate(pairs)
        if replies[3 * n] is not None
    ]
    found.sort(key=lambda info: (info.created_at, info.id))
    return found[:limit]
