"""Flow control on PostgreSQL: rate limits, concurrency slots, bounded enqueue.

`take_rate` is one upsert statement (see `queries.sql`). A slot and a bounded enqueue
count rows and then write, which one statement cannot make safe against a concurrent
writer; each is one short transaction that first takes a transaction-scoped advisory
lock on its key (a concurrency limit's key, or the queue), so checks of one key
serialize and checks of different keys never wait for each other.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from offload.brokers.base import EnqueueResult
from offload.brokers.postgres._sql import load_queries
from offload.envelope import Envelope
from offload.errors import QueueFull
from offload.limits import EPSILON_S

if TYPE_CHECKING:
    from offload.brokers.postgres import PostgresBroker

__all__ = ["acquire_slot", "enqueue_bounded", "release_slot", "take_rate"]

_Q = load_queries()


async def take_rate(broker: PostgresBroker, key: str, limit: int, per_s: float) -> float:
    interval = per_s / limit
    params = {
        "key": key,
        "now": broker.clock.now(),
        "interval": interval,
        "tolerance": per_s - interval,
        "epsilon": EPSILON_S,
    }
    [row] = await broker._rows("take_rate", params)
    return float(row["wait"])


async def acquire_slot(
    broker: PostgresBroker, key: str, limit: int, holder: str, ttl_s: float
) -> bool:
    now = broker.clock.now()
    params: dict[str, Any] = {
        "key": key,
        "holder": holder,
        "now": now,
        "until": now + ttl_s,
        "limit": limit,
        "lock": f"offload.slots:{key}",
    }
    async with broker._conn() as conn, conn.transaction():
        await conn.execute(_Q["lock_key"], params)
        await conn.execute(_Q["slots_lapsed"], params)
        if (await conn.execute(_Q["slot_renew"], params)).rowcount:
            return True
        return bool((await conn.execute(_Q["slot_take"], params)).rowcount)


async def release_slot(broker: PostgresBroker, key: str, holder: str) -> None:
    await broker._rowcount("slot_release", {"key": key, "holder": holder})


async def enqueue_bounded(
    broker: PostgresBroker, jobs: Sequence[tuple[Envelope, bytes]], max_depth: int
) -> list[EnqueueResult]:
    """`enqueue` that refuses (QueueFull) to push a queue past `max_depth` waiting jobs."""
    adding: dict[str, int] = {}
    for env, _ in jobs:
        adding[env.queue] = adding.get(env.queue, 0) + 1
    async with broker._conn() as conn, conn.transaction():
        for queue in sorted(adding):  # one lock order: two bounded enqueues never deadlock
            await conn.execute(_Q["lock_key"], {"lock": f"offload.depth:{queue}"})
            row = await (await conn.execute(_Q["depth"], {"queue": queue})).fetchone()
            depth = int(row["n"]) if row else 0
            if depth + adding[queue] > max_depth:
                raise QueueFull(f"queue {queue!r} holds {depth} waiting jobs (max {max_depth})")
        return await broker._enqueue_on(conn, jobs, schema=None)
