"""Inspection on PostgreSQL: counts, one job (by id or key), listings, and the
dead-letter operations (`replay_dead`, `purge_dead`).

What the CLI, the dashboard and the tests use, kept apart from the worker's hot path in
`__init__.py`. Listings and the dead-letter operations filter on the same columns,
so their WHERE clauses come from one builder (`_filters`) of fixed fragments; values
always travel as parameters.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from typing import Any

from offload.brokers._sql_rows import queue_stats
from offload.brokers.base import Finished, JobInfo, Outcome, Page, QueueStats
from offload.brokers.postgres import _rows
from offload.brokers.postgres._executor import QUERIES, Database
from offload.brokers.records import created_cursor, minute_of
from offload.clock import Clock
from offload.codec import decode_value, encode_value
from offload.envelope import JobState, id_floor

__all__ = ["Inspector"]

_Q = QUERIES


class Inspector:
    """Counts, one job, listings and the dead-letter operations, on a `Database`."""

    def __init__(self, db: Database, clock: Clock, channel: str) -> None:
        self._db = db
        self._clock = clock
        self._channel = channel  # the NOTIFY channel of new work (a replay wakes workers)

    async def counts(self, queues: Sequence[str] | None) -> dict[str, QueueStats]:
        async with self._db.connection() as conn, conn.transaction():
            await conn.execute(_Q["fold_counts"])
            if queues is None:
                names = [r["name"] for r in await (await conn.execute(_Q["queues"])).fetchall()]
                cur = await conn.execute(_Q["count_states"])
            else:
                names = list(queues)
                cur = await conn.execute(_Q["count_states_of"], {"queues": names})
            rows = await cur.fetchall()
            every = sorted({*names, *(r["queue"] for r in rows)})
            cur = await conn.execute(_Q["oldest_queued"], {"queues": every})
            oldest_rows = await cur.fetchall()
        return queue_stats(names, rows, {r["queue"]: r["oldest"] for r in oldest_rows})

    async def finished(self, since: float, queues: Sequence[str] | None) -> list[Finished]:
        params = {"first": minute_of(since), "queues": None if queues is None else list(queues)}
        return [
            Finished(r["queue"], int(r["minute"]), Outcome(r["outcome"]), int(r["n"]))
            for r in await self._db.rows("finished", params)
        ]

    async def get_job(self, job_id: str) -> JobInfo | None:
        rows = await self._db.rows("get_job_with_progress", {"id": job_id})
        if not rows:
            return None
        info = _rows.job_info(rows[0])
        progress = rows[0]["progress"]
        return info if progress is None else replace(info, progress=decode_value(bytes(progress)))

    async def find(self, key: str) -> JobInfo | None:
        rows = await self._db.rows("find", {"key": key})
        return _rows.job_info(rows[0]) if rows else None

    async def list_jobs(
        self,
        queue: str | None,
        state: JobState | None,
        limit: int,
        cursor: str | None,
        since: float | None = None,
        until: float | None = None,
    ) -> Page:
        where, params = _filters(queue=queue, state=state)
        ranged = since is not None or until is not None
        if since is not None:
            where.append("created_at >= %(since)s")
            params["since"] = since
        if until is not None:
            where.append("created_at <= %(until)s")
            params["until"] = until
        if cursor and ranged:
            where.append("(created_at, seq) < (%(at)s, %(cursor)s)")
            params["at"], params["cursor"] = created_cursor(cursor)
        elif cursor:
            where.append("seq < %(cursor)s")
            params["cursor"] = int(cursor)
        params["limit"] = limit + 1
        clause = f"WHERE {' AND '.join(where)}" if where else ""
        # With a time range, the offload_jobs_created index's order (0012).
        order = "created_at DESC, seq DESC" if ranged else "seq DESC"
        query = f"SELECT * FROM offload_jobs {clause} ORDER BY {order} LIMIT %(limit)s"
        async with self._db.connection() as conn:
            rows = await (await conn.execute(query, params)).fetchall()
        if len(rows) <= limit or (ranged and limit <= 0):
            return Page([_rows.job_info(r) for r in rows[: max(limit, 0)]], None)
        last = rows[limit - 1] if limit > 0 else {"created_at": 0.0, "seq": 0}
        mark = f"{float(last['created_at'])!r}:{last['seq']}" if ranged else str(last["seq"])
        return Page([_rows.job_info(r) for r in rows[:limit]], mark)

    async def workflow_jobs(self, workflow_id: str, limit: int) -> list[JobInfo]:
        needle = b'"workflow_id":' + encode_value(workflow_id)
        params = {"floor": id_floor(workflow_id), "needle": needle, "limit": limit}
        infos = [_rows.job_info(row) for row in await self._db.rows("workflow_jobs", params)]
        return [
            i for i in infos if (e := i.envelope()) is not None and e.workflow_id == workflow_id
        ]

    async def replay_dead(self, queue: str | None, job_ids: Sequence[str] | None) -> int:
        where, params = _filters(queue=queue, state=JobState.DEAD, job_ids=job_ids)
        params.update(now=self._clock.now(), channel=self._channel)
        query = (
            "UPDATE offload_jobs SET state = 'queued', attempt = 0, due_at = %(now)s,"
            " finished_at = NULL, worker_id = NULL,"
            # A cancel requested while it last ran is not a cancel of the replay.
            " cancel_requested = false,"
            # A ledger job needs a new copy in its delivery: `ledger_due` makes it now.
            " publish_by = CASE WHEN stamp IS NULL THEN NULL ELSE %(now)s END"
            f" WHERE {' AND '.join(where)} RETURNING pg_notify(%(channel)s, queue)"
        )
        async with self._db.connection() as conn:
            return (await conn.execute(query, params)).rowcount

    async def purge_dead(
        self,
        queue: str | None,
        job_ids: Sequence[str] | None,
        older_than: float | None,
    ) -> int:
        where, params = _filters(queue=queue, state=JobState.DEAD, job_ids=job_ids)
        if older_than is not None:
            where.append("coalesce(finished_at, %(now)s) < %(cutoff)s")
            now = self._clock.now()
            params.update(now=now, cutoff=now - older_than)
        # The queues of the deleted jobs are remembered, for `queues` (see queries.sql).
        query = (
            f"WITH gone AS (DELETE FROM offload_jobs WHERE {' AND '.join(where)} RETURNING queue),"
            " remembered AS (INSERT INTO offload_queues (name)"
            " SELECT DISTINCT queue FROM gone ORDER BY 1 ON CONFLICT DO NOTHING)"
            " SELECT count(*) AS n FROM gone"
        )
        async with self._db.connection() as conn:
            row = await (await conn.execute(query, params)).fetchone()
            return int(row["n"]) if row else 0


def _filters(
    *, queue: str | None, state: JobState | None, job_ids: Sequence[str] | None = None
) -> tuple[list[str], dict[str, Any]]:
    """WHERE conditions from fixed fragments (values always travel as parameters)."""
    where: list[str] = []
    params: dict[str, Any] = {}
    if queue:
        where.append("queue = %(queue)s")
        params["queue"] = queue
    if state is not None:
        where.append("state = %(state)s")
        params["state"] = JobState(state).value
    if job_ids is not None:
        where.append("id = ANY(%(ids)s::text[])")
        params["ids"] = list(job_ids)
    return where, params
