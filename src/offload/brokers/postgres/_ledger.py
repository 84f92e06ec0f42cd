"""PostgreSQL as a state store (`offload.brokers.roles.Ledger`): the state of jobs
another part delivers (`offload.brokers.composite`).

A ledger job is a row of `offload_jobs` with a `stamp` (its current copy in the
delivery; '' before the first) and, while that copy is unconfirmed, `publish_by`.
`offload_reserve_v2` leaves these rows alone (migration 0011), so the schema's own
workers never run them and no lapsed lease puts them back. Each method is one
statement (the enqueue: as the broker's own, under the depth lock when bounded).
"""

from __future__ import annotations

import os
from collections.abc import Sequence

from offload.brokers.ledger import PUBLISH_GRACE_S
from offload.brokers.postgres import _rows
from offload.brokers.postgres._enqueue import Inserter
from offload.brokers.postgres._executor import Database
from offload.brokers.records import EnqueueResult, Lease, Outgoing, minute_of
from offload.clock import Clock
from offload.envelope import Envelope

__all__ = ["Keeper"]


class Keeper:
    """The `Ledger` calls of a `PostgresBroker`."""

    def __init__(
        self, db: Database, inserter: Inserter, clock: Clock, *, retention_s: float, ends: str
    ) -> None:
        self._db = db
        self._inserter = inserter
        self._clock = clock
        self._retention_s = retention_s
        self._ends = ends  # the NOTIFY channel of job ends (`_signals.py`)

    async def record(
        self, jobs: Sequence[tuple[Envelope, bytes]], max_depth: int | None
    ) -> tuple[list[EnqueueResult], list[Outgoing]]:
        now = self._clock.now()
        stamps = [os.urandom(8).hex() if (env.not_before or now) <= now else "" for env, _ in jobs]
        ledger = {
            "now": now,
            "stamps": stamps,
            "publish_by": [now + PUBLISH_GRACE_S if stamp else None for stamp in stamps],
        }
        results = await self._inserter.enqueue(jobs, max_depth, ledger)
        out = [
            Outgoing(env.id, env.queue, env.priority, payload, stamp)
            for (env, payload), result, stamp in zip(jobs, results, stamps, strict=True)
            if result.created and stamp
        ]
        return results, out

    async def published(self, jobs: Sequence[Outgoing]) -> None:
        if jobs:
            params = {"ids": [j.job_id for j in jobs], "stamps": [j.stamp for j in jobs]}
            await self._db.rows("ledger_published", params)

    async def due(self, queues: Sequence[str], limit: int) -> list[Outgoing]:
        """Expires the waiting jobs past `expires_at` first, as `reserve` does."""
        now = self._clock.now()
        await self._db.rows(
            "expire_due",
            {
                "now": now,
                "minute": minute_of(now),
                "purge_at": now + self._retention_s,
                "ends": self._ends,
            },
        )
        params = {
            "now": now,
            "queues": list(queues),
            "limit": limit,
            "publish_by": now + PUBLISH_GRACE_S,
        }
        rows = await self._db.rows("ledger_due", params)
        return [
            Outgoing(r["id"], r["queue"], r["priority"], bytes(r["payload"]), r["stamp"])
            for r in rows
        ]

    async def claim(
        self, delivered: Sequence[Lease], worker_id: str, lease_s: float
    ) -> list[Lease | None]:
        copies = [copy for copy in delivered if copy.stamp]
        if not copies:
            return [None] * len(delivered)
        now = self._clock.now()
        deadline = now + lease_s
        tokens = [os.urandom(12).hex() for _ in copies]
        params = {
            "now": now,
            "worker_id": worker_id,
            "deadline": deadline,
            "ids": [copy.job_id for copy in copies],
            "stamps": [copy.stamp for copy in copies],
            "tokens": tokens,
            "lease_error": _rows.LEASE_EXPIRED,
        }
        rows = {(r["id"], r["token"]): r for r in await self._db.rows("ledger_claim", params)}
        by_copy = {id(copy): token for copy, token in zip(copies, tokens, strict=True)}
        claimed: list[Lease | None] = []
        for copy in delivered:
            row = rows.get((copy.job_id, by_copy.get(id(copy), "")))
            claimed.append(
                None
                if row is None
                else Lease(
                    copy.job_id,
                    row["token"],
                    row["queue"],
                    row["attempt"],
                    deadline,
                    bytes(row["payload"]),
                    copy.stamp,
                )
            )
        return claimed
