"""The SQLite broker as a state store (`offload.brokers.roles.Ledger`): the state of
jobs another part delivers (`offload.brokers.composite`).

A ledger job is a row of `offload_jobs` like any other, with a `stamp` (its current
copy in the delivery; '' before the first) and, while that copy is unconfirmed, a
`publish_by` time. The store's own reservation leaves these rows alone (`stamp IS
NULL` in `promote_due`, `reclaim_lapsed` and `ready_in_queue`), so no worker of the
file itself runs them and no lapsed lease puts them back: the delivery holds them.
Each function is one transaction, run through `Store.run` like the store's own.
"""

from __future__ import annotations

import json
import os
import sqlite3
from collections.abc import Sequence

from offload.brokers._sql import named_queries
from offload.brokers._sql_rows import blob
from offload.brokers.ledger import PUBLISH_GRACE_S
from offload.brokers.records import LEASE_EXPIRED, EnqueueResult, Lease, Outgoing
from offload.brokers.sqlite._store import Store
from offload.codec import encode_error
from offload.envelope import Envelope

__all__ = ["claim", "due", "published", "record"]

_Q = named_queries("offload.brokers.sqlite")
#: The error of a job whose copy came back to be run again: its holder is gone.
_LEASE_EXPIRED = encode_error(LEASE_EXPIRED).decode()


def _copies(store: Store, out: list[Outgoing], now: float) -> list[Outgoing]:
    """Make `out` the jobs' current copies: `queued` with their stamps, unconfirmed
    for `PUBLISH_GRACE_S`."""
    store._conn.executemany(
        _Q["ledger_copy"], [(job.stamp, now + PUBLISH_GRACE_S, job.job_id) for job in out]
    )
    return out


def _stamp() -> str:
    return os.urandom(8).hex()


def record(
    store: Store, jobs: Sequence[tuple[Envelope, bytes]], max_depth: int | None
) -> tuple[list[EnqueueResult], list[Outgoing]]:
    """`Ledger.record`: `enqueue` as ledger jobs, and a first copy of those due now."""
    if not jobs:
        return [], []
    with store._write() as now:
        results, _ = store._add(jobs, max_depth, now, _Q["insert_ledger_job"])
        out = [
            Outgoing(env.id, env.queue, env.priority, payload, _stamp())
            for (env, payload), result in zip(jobs, results, strict=True)
            if result.created and (env.not_before or now) <= now
        ]
        return results, _copies(store, out, now)


def published(store: Store, jobs: Sequence[Outgoing]) -> None:
    """`Ledger.published`."""
    if not jobs:
        return
    with store._write():
        store._conn.executemany(_Q["ledger_published"], [(j.job_id, j.stamp) for j in jobs])


def due(store: Store, queues: Sequence[str], limit: int) -> tuple[list[Outgoing], list[str]]:
    """`Ledger.due`, and first what the store's own `reserve` does first: expire the
    waiting jobs past `expires_at`. Returns the copies and the ids that expired. Looks
    without the write lock first: every reservation asks, and the answer is almost
    always nothing."""
    names = json.dumps(list(queues))
    now = store._clock.now()
    if not _due_rows(store, names, limit, now) and not _expiring(store, now):
        return [], []
    with store._write() as now:
        expired = store._expire(now)
        return _hand_out(store, names, limit, now), expired


def _hand_out(store: Store, queues: str, limit: int, now: float) -> list[Outgoing]:
    """The due jobs' new copies, in the caller's write (after `_expire`)."""
    rows = _due_rows(store, queues, limit, now)
    store._move([r["queue"] for r in rows if r["state"] == "scheduled"], "scheduled", "queued")
    out = [
        Outgoing(row["id"], row["queue"], row["priority"], blob(row["payload"]), _stamp())
        for row in rows
    ]
    return _copies(store, out, now)


def _expiring(store: Store, now: float) -> bool:
    return store._conn.execute(_Q["any_expiring"], {"now": now}).fetchone() is not None


def _due_rows(store: Store, queues: str, limit: int, now: float) -> list[sqlite3.Row]:
    conn = store._conn
    params = {"queues": queues, "limit": limit, "now": now}
    rows = conn.execute(_Q["ledger_due"], params).fetchall()
    if len(rows) < limit:
        params["limit"] = limit - len(rows)
        rows += conn.execute(_Q["ledger_unconfirmed"], params).fetchall()
    return rows


def claim(
    store: Store,
    delivered: Sequence[Lease],
    worker_id: str,
    lease_s: float,
    due_in: Sequence[str],
    limit: int,
) -> tuple[list[Lease | None], list[Outgoing], list[str]]:
    """`Ledger.claim` and, if `due_in` names queues, `Ledger.due` of them, in one
    transaction (`Ledger.claim_due`). Returns the leases, the due copies, and the ids
    of jobs that expired first."""
    with store._write() as now:
        expired = store._expire(now)
        claimed = _claim(store, delivered, worker_id, now, now + lease_s)
        due_out = _hand_out(store, json.dumps(list(due_in)), limit, now) if due_in else []
    return claimed, due_out, expired


def _claim(
    store: Store, delivered: Sequence[Lease], worker_id: str, now: float, deadline: float
) -> list[Lease | None]:
    """The claims of `claim`, in the caller's write (after `_expire`).

    Two statements for the whole batch: one read of the jobs' rows, and one
    `executemany` of the claims decided from them (under the write lock, so the rows
    cannot change in between); copies are decided in order, so a copy delivered twice
    in one batch is claimed twice, as one after the other."""
    conn = store._conn
    claimed: list[Lease | None] = []
    ids = json.dumps([copy.job_id for copy in delivered if copy.stamp])
    rows = {row["id"]: row for row in conn.execute(_Q["ledger_copies"], (ids,))}
    # A job's state and attempt as this batch's claims leave them.
    now_running: dict[str, int] = {}
    updates: list[tuple[str, int, float, str, float, str | None, str]] = []
    moved: list[str] = []
    for copy in delivered:
        row = rows.get(copy.job_id) if copy.stamp else None
        if row is None or row["stamp"] != copy.stamp:
            claimed.append(None)
            continue
        attempt = now_running.get(copy.job_id)
        taken_back = attempt is not None or row["state"] == "running"
        if attempt is None:
            if row["state"] not in ("queued", "running"):
                claimed.append(None)
                continue
            if not taken_back:
                moved.append(row["queue"])
            attempt = row["attempt"]
        attempt += 1
        now_running[copy.job_id] = attempt
        token = os.urandom(12).hex()
        error = _LEASE_EXPIRED if taken_back else None
        updates.append((token, attempt, now, worker_id, deadline, error, copy.job_id))
        claimed.append(
            Lease(
                copy.job_id,
                token,
                row["queue"],
                attempt,
                deadline,
                blob(row["payload"]),
                copy.stamp,
            )
        )
    if updates:
        conn.executemany(_Q["ledger_claim"], updates)
        store._move(moved, "queued", "running")
    return claimed
