"""Operations on PostgreSQL: pause flags and attempt history (`operate.sql`).

Kept apart from the job lifecycle: each call is one statement on a pooled connection
of the `Database`, on its own tables (`migrations/0008_operate.sql`).
"""

from __future__ import annotations

from typing import Any

from offload.brokers._sql import named_queries
from offload.brokers.postgres._executor import Database
from offload.clock import Clock

__all__ = ["Operations"]

_Q = named_queries(__name__.rpartition(".")[0], "operate.sql")


class Operations:
    """Pause flags (the `Fleet` role) and attempt records (`Inspection`), on a `Database`."""

    def __init__(self, db: Database, clock: Clock) -> None:
        self._db = db
        self._clock = clock

    async def _execute(self, name: str, params: dict[str, Any]) -> Any:
        async with self._db.connection() as conn:
            cur = await conn.execute(_Q[name], params)
            return (await cur.fetchall() if cur.description else []), cur.rowcount

    async def set_paused(self, name: str, paused: bool) -> bool:
        query = "pause_set" if paused else "pause_clear"
        _, count = await self._execute(query, {"name": name, "now": self._clock.now()})
        return bool(count == 1)

    async def paused(self) -> dict[str, float]:
        rows, _ = await self._execute("paused", {})
        return {row["name"]: float(row["paused_at"]) for row in rows}

    async def record_attempt(self, job_id: str, token: str, record: bytes, keep: int) -> None:
        params = {"id": job_id, "token": token, "record": record, "keep": keep}
        await self._execute("attempt_add", params)

    async def attempt_records(self, job_id: str) -> tuple[list[bytes], int]:
        rows, _ = await self._execute("attempts", {"id": job_id})
        return [bytes(r["record"]) for r in rows], (int(rows[0]["n"]) - 1 if rows else 0)

    async def forget_orphans(self) -> None:
        """Drop the history of purged jobs (run by `sweep` and `purge_dead`)."""
        await self._execute("attempts_orphans", {})
