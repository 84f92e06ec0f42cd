"""Rows of the SQL brokers' jobs table (SQLite and PostgreSQL share its columns) as
`JobInfo`, written once for both."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from offload.brokers.base import JobInfo, QueueStats, WorkerInfo
from offload.codec import decode_error, decode_value
from offload.envelope import JobState

__all__ = ["blob", "job_info", "queue_stats", "worker_info"]


def blob(value: object) -> bytes:
    """Bytes from a BLOB/BYTEA column, tolerating rows another tool wrote as text: the
    worker, not the broker, decides what to do with a payload it cannot read."""
    if isinstance(value, bytes):
        return value
    if isinstance(value, bytearray | memoryview):
        return bytes(value)
    if value is None:
        return b""
    return str(value).encode()


def job_info(row: Mapping[str, Any]) -> JobInfo:
    result = row["result"]
    return JobInfo(
        id=row["id"],
        task=row["task"],
        queue=row["queue"],
        state=JobState(row["state"]),
        priority=row["priority"],
        attempt=row["attempt"],
        max_attempts=row["max_attempts"],
        key=row["key"],
        created_at=row["created_at"],
        due_at=row["due_at"],
        expires_at=row["expires_at"],
        started_at=row["started_at"],
        finished_at=row["finished_at"],
        worker_id=row["worker_id"],
        lease_deadline=row["lease_deadline"],
        error=decode_error(row["error"]),
        payload=blob(row["payload"]),
        result=None if result is None else blob(result),
        cancel_requested=bool(row["cancel_requested"]),
    )


def worker_info(row: Mapping[str, Any]) -> WorkerInfo:
    return WorkerInfo(
        id=row["id"],
        hostname=row["hostname"],
        pid=row["pid"],
        queues=decode_value(row["queues"]),
        concurrency=row["concurrency"],
        started_at=row["started_at"],
        last_seen=row["last_seen"],
        running=row["running"],
        processed=row["processed"],
        extra=decode_value(row["extra"]),
    )


def queue_stats(
    names: Iterable[str], rows: Iterable[Mapping[str, Any]], oldest: Mapping[str, float]
) -> dict[str, QueueStats]:
    """`Broker.counts` from `(queue, state, n)` rows: every state of every queue in
    `names` (0 when absent), and of any other queue a row names, sorted by queue."""
    states: dict[str, dict[JobState, int]] = {q: {} for q in names}
    for row in rows:
        states.setdefault(row["queue"], {})[JobState(row["state"])] = row["n"]
    return {
        queue: QueueStats({s: per.get(s, 0) for s in JobState}, oldest.get(queue))
        for queue, per in sorted(states.items())
    }
