"""Inspection on Redis: counts, one job (by id or key), listings, and the dead-letter
operations (`replay_dead`, `purge_dead`).

What the CLI, the dashboard and the tests use, kept apart from the worker's hot path in
`__init__.py`. Jobs live in per-queue keys, so each of these runs one script or a few
commands per known queue (pipelined) and merges the replies: a job id or an
idempotency key is looked up in every queue, and `list_jobs` merges the newest of each.
"""

from __future__ import annotations

import asyncio
import heapq
from collections.abc import Sequence
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from offload.brokers.base import JobInfo, Page, QueueStats
from offload.brokers.redis import keys as K
from offload.brokers.redis._records import job_info, num, text
from offload.brokers.redis._scripts import Call
from offload.codec import decode_value
from offload.envelope import JobState

if TYPE_CHECKING:
    from offload.brokers.redis import RedisBroker

__all__ = ["counts", "find", "get_job", "list_jobs", "purge_dead", "replay_dead"]

#: Most jobs `list_jobs` inspects per script call.
SCAN_BUDGET = 2000
_STATE_ORDER = (
    JobState.SCHEDULED,
    JobState.QUEUED,
    JobState.RUNNING,
    JobState.SUCCEEDED,
    JobState.DEAD,
    JobState.EXPIRED,
    JobState.CANCELLED,
)


async def counts(broker: RedisBroker, queues: Sequence[str] | None) -> dict[str, QueueStats]:
    names = await broker._known_queues() if queues is None else list(dict.fromkeys(queues))
    replies = await broker._run_many([("counts", broker._q(q), []) for q in names])
    out: dict[str, QueueStats] = {}
    for queue, reply in zip(names, replies, strict=True):
        states = {s: int(n) for s, n in zip(_STATE_ORDER, reply[:7], strict=True)}
        oldest = None if reply[7] in (None, False, 0) else float(reply[7])
        out[queue] = QueueStats(states, oldest)
    return dict(sorted(out.items()))


async def get_job(broker: RedisBroker, job_id: str) -> JobInfo | None:
    return await _fetch(broker, await broker._known_queues(), job_id)


async def _fetch(broker: RedisBroker, names: Sequence[str], job_id: str) -> JobInfo | None:
    """The job with its progress, from the first of `names` that holds it."""
    commands: list[tuple[Any, ...]] = [("GET", K.progress_key(broker.prefix, job_id))]
    for queue in names:
        q = broker._q(queue)
        commands += [("HGET", q.record, job_id), ("HGET", q.payload, job_id)]
        commands.append(("HGET", q.result, job_id))
    progress, *replies = await broker._commands(commands)
    for n, queue in enumerate(names):
        raw, payload, result = replies[3 * n : 3 * n + 3]
        if raw is not None:
            info = job_info(job_id, queue, raw, payload, result)
            return info if progress is None else replace(info, progress=decode_value(progress))
    return None


async def find(broker: RedisBroker, key: str) -> JobInfo | None:
    names = await broker._known_queues()
    ids = await broker._commands([("HGET", broker._q(q).keys, key) for q in names])
    for queue, job_id in zip(names, ids, strict=True):
        if job_id is not None:
            return await _fetch(broker, [queue], text(job_id))
    return None


async def list_jobs(
    broker: RedisBroker,
    queue: str | None,
    state: JobState | None,
    limit: int,
    cursor: str | None,
) -> Page:
    names = [queue] if queue else await broker._known_queues()
    want = limit + 1
    found = await asyncio.gather(
        *(_list_queue(broker, q, state, want, cursor or "") for q in names)
    )
    merged = heapq.nlargest(want, (item for items in found for item in items))
    infos = [job_info(*item[1:]) for item in merged]
    if len(infos) <= limit:
        return Page(infos, None)
    return Page(infos[:limit], merged[limit - 1][0] if limit > 0 else None)


async def _list_queue(
    broker: RedisBroker, queue: str, state: JobState | None, want: int, below: str
) -> list[tuple[str, str, str, bytes, bytes, bytes | None]]:
    items: list[tuple[str, str, str, bytes, bytes, bytes | None]] = []
    wanted = "" if state is None else JobState(state).value
    while len(items) < want:
        args = [below, wanted, str(want - len(items)), str(SCAN_BUDGET)]
        reply = await broker._run("list_jobs", broker._q(queue), args)
        for i in range(2, len(reply), 4):
            member = text(reply[i])
            job_id = member[27:]
            items.append((member, job_id, queue, reply[i + 1], reply[i + 2], reply[i + 3]))
        below = text(reply[0])
        if reply[1] or not below:
            break
    return items


async def replay_dead(broker: RedisBroker, queue: str | None, job_ids: Sequence[str] | None) -> int:
    if job_ids is not None and not job_ids:
        return 0
    names = [queue] if queue else await broker._known_queues()
    now = num(broker.clock.now())
    ids = list(job_ids or [])
    calls: list[Call] = [
        ("replay_dead", broker._q(q), [now, broker._channel(q), *ids]) for q in names
    ]
    return sum(int(n) for n in await broker._run_many(calls))


async def purge_dead(
    broker: RedisBroker,
    queue: str | None,
    job_ids: Sequence[str] | None,
    older_than: float | None,
) -> int:
    if job_ids is not None and not job_ids:
        return 0
    names = [queue] if queue else await broker._known_queues()
    cutoff = "" if older_than is None else num(broker.clock.now() - older_than)
    ids = list(job_ids or [])
    calls: list[Call] = [("purge_dead", broker._q(q), [cutoff, *ids]) for q in names]
    return sum(int(n) for n in await broker._run_many(calls))
