"""Chord joins on PostgreSQL (`Broker.join`).

Insert-then-count is two statements: under READ COMMITTED, two members committing at
once could each miss the other's row and neither see the group complete. So each
join is one short transaction that first takes a transaction-scoped advisory lock on
the group: joins of one group serialize, and each sees every earlier one.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from offload.brokers.postgres._sql import load_queries

if TYPE_CHECKING:
    from offload.brokers.postgres import PostgresBroker

__all__ = ["join"]

_Q = load_queries()


async def join(
    broker: PostgresBroker, group_id: str, member_id: str, index: int, total: int, outcome: bytes
) -> list[bytes] | None:
    params = {
        "group_id": group_id,
        "member_id": member_id,
        "idx": index,
        "outcome": outcome,
        "now": broker.clock.now(),
        "lock": f"offload.joins:{group_id}",
    }
    async with broker._conn() as conn, conn.transaction():
        await conn.execute(_Q["lock_key"], params)
        await conn.execute(_Q["join_insert"], params)
        [row] = await (await conn.execute(_Q["join_count"], params)).fetchall()
        if row["n"] < total:
            return None
        rows = await (await conn.execute(_Q["join_outcomes"], params)).fetchall()
    return [bytes(r["outcome"]) for r in rows]
