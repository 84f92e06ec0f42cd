"""Inspection on SQLite: counts, finished jobs per minute, lookups, listings (by
queue, state and creation time), workflow jobs, the dead-letter queue's replay and
purge, progress.

Kept apart from the job lifecycle in `_store.py`: these serve people and tools (CLI,
dashboard, `Job` handles), not workers, and read more than they write. Each function
is one transaction (or one read snapshot) through `Store.run`, like the store's own
operations, on its public surface (`conn`, `write`, `snapshot`, `move`, `signal`).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import replace

from offload.brokers._sql import named_queries
from offload.brokers._sql_rows import job_info, queue_stats
from offload.brokers.base import Finished, JobInfo, Outcome, Page, QueueStats
from offload.brokers.records import created_cursor, minute_of
from offload.brokers.sqlite._store import Store
from offload.codec import decode_value
from offload.envelope import JobState, id_floor

__all__ = [
    "counts",
    "find",
    "finished",
    "get_job",
    "list_jobs",
    "purge_dead",
    "queue_names",
    "replay_dead",
    "set_progress",
    "workflow_jobs",
]

#: A state with at most this many jobs is listed by a time range from its own index,
#: its jobs sorted, instead of by walking the creation index (`_created_walk_index`).
DIRECT_MAX = 10_000
_Q = named_queries("offload.brokers.sqlite")


def _id_list(job_ids: Sequence[str] | None) -> str | None:
    return None if job_ids is None else json.dumps(list(job_ids))


def counts(store: Store, queues: Sequence[str] | None) -> dict[str, QueueStats]:
    """Per queue: the requested ones (even if unknown), else every known queue
    (including those whose jobs were all purged, as `queues` lists them)."""
    conn = store.conn
    with store.snapshot():
        if queues is None:
            names = queue_names(store)
            rows = conn.execute(_Q["count_states"]).fetchall()
        else:
            names = list(queues)
            rows = conn.execute(_Q["count_states_of"], (json.dumps(names),)).fetchall()
        oldest = {}
        for queue in {*names, *(row["queue"] for row in rows)}:
            first = conn.execute(_Q["oldest_queued"], {"queue": queue}).fetchone()[0]
            if first is not None:
                oldest[queue] = first
    return queue_stats(names, rows, oldest)


def finished(store: Store, since: float, queues: Sequence[str] | None) -> list[Finished]:
    params = {"first": minute_of(since), "queues": _id_list(queues)}
    rows = store.conn.execute(_Q["finished"], params)
    return [Finished(r[0], int(r[1]), Outcome(r[2]), int(r[3])) for r in rows]


def get_job(store: Store, job_id: str) -> JobInfo | None:
    with store.snapshot():
        row = store.conn.execute(_Q["get_job"], (job_id,)).fetchone()
        progress = store.conn.execute(_Q["get_progress"], (job_id,)).fetchone()
    if row is None:
        return None
    info = job_info(row)
    return info if progress is None else replace(info, progress=decode_value(progress[0]))


def set_progress(store: Store, job_id: str, progress: bytes) -> None:
    with store.write():
        store.conn.execute(_Q["set_progress"], (job_id, progress))


def find(store: Store, key: str) -> JobInfo | None:
    row = store.conn.execute(_Q["find"], (key,)).fetchone()
    return None if row is None else job_info(row)


def workflow_jobs(store: Store, workflow_id: str, limit: int) -> list[JobInfo]:
    params = {"floor": id_floor(workflow_id), "wf": workflow_id, "limit": limit}
    return [job_info(row) for row in store.conn.execute(_Q["workflow_jobs"], params)]


def list_jobs(
    store: Store,
    queue: str | None,
    state: JobState | None,
    limit: int,
    cursor: str | None,
    since: float | None,
    until: float | None,
) -> Page:
    """Newest first; the cursor is the `seq` of the page's last job, and the next
    page starts below it, so deletes in between never skip or repeat a job. With a
    time range, newest created first (`created_at`, then `seq`), walking the
    `offload_jobs_created` index; the cursor is then `created_at:seq`."""
    conditions: list[str] = []
    params: list[object] = []
    for condition, value in (
        ("queue = ?", queue or None),
        ("state = ?", None if state is None else JobState(state).value),
        ("created_at >= ?", since),
        ("created_at <= ?", until),
    ):
        if value is not None:
            conditions.append(condition)
            params.append(value)
    if since is not None or until is not None:
        index = _created_walk_index(store, queue, state)
        return _list_created(store, index, conditions, params, limit, cursor)
    if cursor:
        conditions.append("seq < ?")
        params.append(int(cursor))
    where = f"WHERE {' AND '.join(conditions)}" if conditions else ""
    sql = f"SELECT * FROM offload_jobs {where} ORDER BY seq DESC LIMIT ?"
    rows = store.conn.execute(sql, [*params, limit + 1]).fetchall()
    if len(rows) <= limit:
        return Page([job_info(row) for row in rows], None)
    last_seq = rows[limit - 1]["seq"] if limit > 0 else 0
    return Page([job_info(row) for row in rows[:limit]], str(last_seq))


def _created_walk_index(store: Store, queue: str | None, state: JobState | None) -> str:
    """The index a time-range listing reads: the creation index, walked in listing
    order, unless the state asked for is rare (at most `DIRECT_MAX` jobs, counted
    on the state's index, stopping there): then that state's index, its jobs
    sorted, so a few dead jobs among a million are not found by walking the range."""
    if state is None:
        return "offload_jobs_created"
    index = "offload_jobs_queue_state" if queue else "offload_jobs_state"
    where = "queue = ? AND state = ?" if queue else "state = ?"
    args = [queue, JobState(state).value] if queue else [JobState(state).value]
    probe = (
        f"SELECT count(*) FROM (SELECT 1 FROM offload_jobs INDEXED BY {index}"
        f" WHERE {where} LIMIT ?)"
    )
    found = store.conn.execute(probe, [*args, DIRECT_MAX + 1]).fetchone()[0]
    return index if found <= DIRECT_MAX else "offload_jobs_created"


def _list_created(
    store: Store,
    index: str,
    conditions: list[str],
    params: list[object],
    limit: int,
    cursor: str | None,
) -> Page:
    """`list_jobs` with a time range (see there), given its other conditions and
    the index to read (`_created_walk_index`)."""
    if cursor:
        at, seq = created_cursor(cursor)
        # The bound on created_at is the seek; the rest skips the ties before it.
        conditions.append("created_at <= ? AND (created_at < ? OR seq < ?)")
        params += [at, at, seq]
    sql = (
        f"SELECT * FROM offload_jobs INDEXED BY {index}"
        f" WHERE {' AND '.join(conditions)} ORDER BY created_at DESC, seq DESC LIMIT ?"
    )
    rows = store.conn.execute(sql, [*params, limit + 1]).fetchall()
    page = [job_info(row) for row in rows[:limit]]
    if len(rows) <= limit or limit <= 0:
        return Page(page, None)
    last = rows[limit - 1]
    return Page(page, f"{float(last['created_at'])!r}:{last['seq']}")


def replay_dead(store: Store, queue: str | None, job_ids: Sequence[str] | None) -> int:
    with store.write() as now:
        params = {"now": now, "queue": queue, "ids": _id_list(job_ids)}
        rows = store.conn.execute(_Q["replay_dead"], params).fetchall()
        store.move((row["queue"] for row in rows), JobState.DEAD, JobState.QUEUED)
        store.signal({row["queue"] for row in rows})
    return len(rows)


def purge_dead(
    store: Store, queue: str | None, job_ids: Sequence[str] | None, older_than: float | None
) -> int:
    with store.write() as now:
        params = {
            "now": now,
            "queue": queue,
            "ids": _id_list(job_ids),
            "cutoff": None if older_than is None else now - older_than,
        }
        rows = store.conn.execute(_Q["purge_dead"], params).fetchall()
        store.move((row["queue"] for row in rows), JobState.DEAD, None)
    return len(rows)


def queue_names(store: Store) -> list[str]:
    return [row["name"] for row in store.conn.execute(_Q["queues"])]
