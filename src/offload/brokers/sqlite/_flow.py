"""Flow on SQLite: rate limits, concurrency slots, chord joins and registers, the
coordination between workers (`offload.brokers.roles.Flow`, but for the outbox, which
ends jobs and stays with them in `_store.py`).

Kept apart from the job lifecycle in `_store.py`: each of these touches only its own
table (`offload_rates`, `offload_slots`, `offload_joins`, `offload_registers`), never a
job. Each function is one write transaction through `Store.run`, on the store's public
surface (`conn`, `write`).
"""

from __future__ import annotations

from offload.brokers._sql import named_queries
from offload.brokers.sqlite._store import Store
from offload.limits import gcra

__all__ = ["acquire_slot", "compare_and_set", "join", "release_slot", "take_rate"]

_Q = named_queries("offload.brokers.sqlite")


def take_rate(store: Store, key: str, limit: int, per_s: float) -> float:
    with store.write() as now:
        row = store.conn.execute(_Q["rate_tat"], (key,)).fetchone()
        tat, wait = gcra(None if row is None else row[0], now, limit, per_s)
        if tat is not None:
            store.conn.execute(_Q["rate_set"], (key, tat))
    return wait


def join(
    store: Store, group_id: str, member_id: str, index: int, total: int, outcome: bytes
) -> list[bytes] | None:
    conn = store.conn
    with store.write() as now:
        conn.execute(_Q["join_insert"], (group_id, member_id, index, outcome, now))
        if conn.execute(_Q["join_count"], (group_id,)).fetchone()[0] < total:
            return None
        return [bytes(row[0]) for row in conn.execute(_Q["join_outcomes"], (group_id,))]


def acquire_slot(store: Store, key: str, limit: int, holder: str, ttl_s: float) -> bool:
    conn = store.conn
    with store.write() as now:
        conn.execute(_Q["slots_lapsed"], (key, now))
        params = {"key": key, "holder": holder, "until": now + ttl_s, "limit": limit}
        if conn.execute(_Q["slot_renew"], params).rowcount:
            return True
        return bool(conn.execute(_Q["slot_take"], params).rowcount)


def compare_and_set(
    store: Store, name: str, expected: str | None, new: str, ttl_s: float
) -> str | None:
    with store.write() as now:
        row = store.conn.execute(_Q["register_get"], (name, now)).fetchone()
        current = None if row is None else str(row[0])
        if current not in (expected, new):
            return current
        store.conn.execute(_Q["register_set"], (name, new, now + ttl_s))
    return new


def release_slot(store: Store, key: str, holder: str) -> None:
    with store.write():
        store.conn.execute(_Q["slot_release"], (key, holder))
