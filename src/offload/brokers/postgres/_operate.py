"""Operations on PostgreSQL: pause flags and attempt history (`operate.sql`).

Kept apart from the job lifecycle: each call is one statement on a pooled connection,
on its own tables (`migrations/0008_operate.sql`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from offload.brokers.postgres._sql import load_queries

if TYPE_CHECKING:
    from offload.brokers.postgres import PostgresBroker

__all__ = ["attempt_records", "forget_orphans", "paused", "record_attempt", "set_paused"]

_Q = load_queries("operate.sql")


async def _execute(broker: PostgresBroker, name: str, params: dict[str, Any]) -> Any:
    async with broker._conn() as conn:
        cur = await conn.execute(_Q[name], params)
        return (await cur.fetchall() if cur.description else []), cur.rowcount


async def set_paused(broker: PostgresBroker, name: str, paused: bool) -> bool:
    query = "pause_set" if paused else "pause_clear"
    _, count = await _execute(broker, query, {"name": name, "now": broker.clock.now()})
    return bool(count == 1)


async def paused(broker: PostgresBroker) -> dict[str, float]:
    rows, _ = await _execute(broker, "paused", {})
    return {row["name"]: float(row["paused_at"]) for row in rows}


async def record_attempt(
    broker: PostgresBroker, job_id: str, token: str, record: bytes, keep: int
) -> None:
    params = {"id": job_id, "token": token, "record": record, "keep": keep}
    await _execute(broker, "attempt_add", params)


async def attempt_records(broker: PostgresBroker, job_id: str) -> tuple[list[bytes], int]:
    rows, _ = await _execute(broker, "attempts", {"id": job_id})
    return [bytes(r["record"]) for r in rows], (int(rows[0]["n"]) - 1 if rows else 0)


async def forget_orphans(broker: PostgresBroker) -> None:
    """Drop the history of purged jobs (run by `sweep` and `purge_dead`)."""
    await _execute(broker, "attempts_orphans", {})
