"""Coordination on PostgreSQL: rate limits, concurrency slots, chord joins, registers,
and the outbox of jobs that ended without a worker (the `Flow` role).

`take_rate` is one upsert statement (see `queries.sql`). A slot counts rows and then
writes, which one statement cannot make safe against a concurrent writer; so does a
join (insert, then count: under READ COMMITTED, two members committing at once could
each miss the other's row and neither see the group complete). Each is one short
transaction that first takes a transaction-scoped advisory lock on its key (a
concurrency limit's key, or the group), so calls on one key serialize and calls on
different keys never wait for each other.

The outbox is not a table: a job that is cancelled while waiting or expires gets its
`outbox_seq` set by the very statement that changes its state (for the jobs whose
`flow` column is set: every job enqueued since metrics count these ends, and workflow
jobs before), and `clear_outbox` sets it back to NULL, returning the rows it changed:
a row is locked while one call updates it, and a concurrent call then finds it NULL,
so each entry is cleared by one call. The entry is thus atomic with the state change,
costs no extra write, and vanishes when the job is purged.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from offload.brokers.base import Ended
from offload.brokers.postgres._executor import QUERIES as _Q
from offload.brokers.postgres._executor import Database
from offload.clock import Clock
from offload.envelope import JobState
from offload.limits import EPSILON_S

__all__ = ["Flow"]


class Flow:
    """The `Flow` role on a `Database`."""

    def __init__(self, db: Database, clock: Clock) -> None:
        self._db = db
        self._clock = clock

    async def take_rate(self, key: str, limit: int, per_s: float) -> float:
        interval = per_s / limit
        params = {
            "key": key,
            "now": self._clock.now(),
            "interval": interval,
            "tolerance": per_s - interval,
            "epsilon": EPSILON_S,
        }
        [row] = await self._db.rows("take_rate", params)
        return float(row["wait"])

    async def acquire_slot(self, key: str, limit: int, holder: str, ttl_s: float) -> bool:
        now = self._clock.now()
        params: dict[str, Any] = {
            "key": key,
            "holder": holder,
            "now": now,
            "until": now + ttl_s,
            "limit": limit,
            "lock": f"offload.slots:{key}",
        }
        async with self._db.connection() as conn, conn.transaction():
            await conn.execute(_Q["lock_key"], params)
            await conn.execute(_Q["slots_lapsed"], params)
            if (await conn.execute(_Q["slot_renew"], params)).rowcount:
                return True
            return bool((await conn.execute(_Q["slot_take"], params)).rowcount)

    async def release_slot(self, key: str, holder: str) -> None:
        await self._db.rowcount("slot_release", {"key": key, "holder": holder})

    async def compare_and_set(
        self, name: str, expected: str | None, new: str, ttl_s: float
    ) -> str | None:
        now = self._clock.now()
        params = {"name": name, "expected": expected, "new": new, "now": now}
        query = "register_set" if expected is None else "register_move"
        if await self._db.rows(query, params | {"until": now + ttl_s}):
            return new
        # Left alone: the value it holds now (a later statement sees the latest commit).
        rows = await self._db.rows("register_get", params)
        return str(rows[0]["value"]) if rows else None

    async def join(
        self, group_id: str, member_id: str, index: int, total: int, outcome: bytes
    ) -> list[bytes] | None:
        params = {
            "group_id": group_id,
            "member_id": member_id,
            "idx": index,
            "outcome": outcome,
            "now": self._clock.now(),
            "lock": f"offload.joins:{group_id}",
        }
        async with self._db.connection() as conn, conn.transaction():
            await conn.execute(_Q["lock_key"], params)
            await conn.execute(_Q["join_insert"], params)
            [row] = await (await conn.execute(_Q["join_count"], params)).fetchall()
            if row["n"] < total:
                return None
            rows = await (await conn.execute(_Q["join_outcomes"], params)).fetchall()
        return [bytes(r["outcome"]) for r in rows]

    async def outbox(self, limit: int) -> list[Ended]:
        rows = await self._db.rows("outbox", {"limit": max(limit, 0)})
        return [Ended(r["id"], JobState(r["state"]), bytes(r["payload"])) for r in rows]

    async def clear_outbox(self, job_ids: Sequence[str]) -> list[str]:
        if not job_ids:
            return []
        rows = await self._db.rows("clear_outbox", {"ids": list(job_ids)})
        return [r["id"] for r in rows]
