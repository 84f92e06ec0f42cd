"""Rows of the SQL brokers' jobs table (SQLite and PostgreSQL share its columns) as
`JobInfo`, written once for both."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import msgspec

from offload.brokers.base import JobInfo, WorkerInfo
from offload.codec import decode_error, decode_value
from offload.job import ErrorInfo, JobState

__all__ = ["blob", "job_info", "stored_error", "worker_info"]


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


def stored_error(value: str | bytes | None) -> ErrorInfo | None:
    """The stored error record; a corrupt one is reported, not raised."""
    if value is None:
        return None
    try:
        return decode_error(value)
    except msgspec.DecodeError:
        return ErrorInfo("Undecodable", f"stored error is not an ErrorInfo: {value!r:.200}")


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
        error=stored_error(row["error"]),
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
