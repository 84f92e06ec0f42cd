"""Operations on SQLite: pause flags and attempt history (`operate.sql`).

Kept apart from the job lifecycle in `_store.py`: these run on the same connection and
through `Store.run` (so a locked file is waited for the same way), but touch only their
own tables.
"""

from __future__ import annotations

from offload.brokers._sql import named_queries
from offload.brokers.sqlite._store import Store

__all__ = ["attempt_records", "forget_orphans", "paused", "record_attempt", "set_paused"]

_Q = named_queries("offload.brokers.sqlite", "operate.sql")


def set_paused(store: Store, name: str, paused: bool) -> bool:
    with store.write() as now:
        if paused:
            return store.conn.execute(_Q["pause_set"], (name, now)).rowcount == 1
        return store.conn.execute(_Q["pause_clear"], (name,)).rowcount == 1


def paused(store: Store) -> dict[str, float]:
    return {name: float(at) for name, at in store.conn.execute(_Q["paused"])}


def record_attempt(store: Store, job_id: str, token: str, record: bytes, keep: int) -> None:
    conn = store.conn
    with store.write():
        last = conn.execute(_Q["attempt_last"], (job_id,)).fetchone()
        if last is not None and last[1] == token:
            return
        n = 1 if last is None else int(last[0]) + 1
        conn.execute(_Q["attempt_add"], (job_id, n, token, record))
        conn.execute(_Q["attempt_trim"], (job_id, n - keep))


def attempt_records(store: Store, job_id: str) -> tuple[list[bytes], int]:
    rows = store.conn.execute(_Q["attempts"], (job_id,)).fetchall()
    return [bytes(r[1]) for r in rows], (int(rows[0][0]) - 1 if rows else 0)


def forget_orphans(store: Store) -> None:
    """Drop the history of purged jobs (run by `sweep`)."""
    with store.write():
        store.conn.execute(_Q["attempts_orphans"])
