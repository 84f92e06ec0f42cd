"""The synchronous half of the SQLite broker: one connection, one transaction per call.

`SQLiteBroker` runs every method of a `Store` on its single executor thread, so a store
is never used by two threads at once and needs no lock of its own. Each write is one
`BEGIN IMMEDIATE` transaction: SQLite's write lock is taken before the first read, so
no other process can change a row between the read and the update that depends on it,
and a busy file makes the caller wait before it has done anything, never halfway.

Methods take positional arguments only, so the broker can pass them to the executor
as plain `(function, *args)` with their types intact.

Job counts (`counts`, the table `offload_counts`) are kept here, not by triggers: every
statement that inserts, moves or deletes jobs returns their queues, each write notes the
moves (`_move`), and the transaction adds them to the counters in one statement before
it commits, one row per queue and state (a batch of a hundred acks: two).
"""

from __future__ import annotations

import heapq
import itertools
import json
import os
import sqlite3
import weakref
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any, TypeVar, TypeVarTuple

from offload.brokers._depth import adding_per_queue, check_depth
from offload.brokers._sql import named_queries
from offload.brokers._sql_rows import blob, job_info, queue_stats, worker_info
from offload.brokers.base import (
    LEASE_EXPIRED,
    Ended,
    Ending,
    EnqueueResult,
    Finished,
    JobInfo,
    Lease,
    Outcome,
    Page,
    QueueStats,
    Settlement,
    SweepReport,
    WorkerInfo,
)
from offload.brokers.records import FINISHED_KEEP_S, created_cursor, minute_of
from offload.brokers.sqlite._connection import connect, retry_busy
from offload.clock import Clock
from offload.codec import decode_value, encode_error, encode_value
from offload.envelope import TERMINAL_STATES, Envelope, JobState, id_floor
from offload.limits import gcra

__all__ = ["Store"]

T = TypeVar("T")
Ts = TypeVarTuple("Ts")

#: A state with at most this many jobs is listed by a time range from its own index,
#: its jobs sorted, instead of by walking the creation index (`_created_walk_index`).
DIRECT_MAX = 10_000
#: The error recorded on a job whose lease lapsed; the same words as every broker.
_LEASE_EXPIRED = encode_error(LEASE_EXPIRED).decode()
_Q = named_queries("offload.brokers.sqlite")
#: The query that records each way a lease ends (`queries.sql`).
_SETTLE = {
    Ending.ACK: _Q["ack"],
    Ending.RETRY: _Q["retry"],
    Ending.BURY: _Q["bury"],
    Ending.DEFER: _Q["defer"],
    Ending.CANCEL: _Q["cancel_running"],
}
#: The state each settlement's query moves a running job to.
_SETTLED = {
    Ending.ACK: JobState.SUCCEEDED,
    Ending.RETRY: JobState.SCHEDULED,
    Ending.BURY: JobState.DEAD,
    Ending.DEFER: JobState.SCHEDULED,
    Ending.CANCEL: JobState.CANCELLED,
}


# -- row conversion -----------------------------------------------------------------------


def _ready_order(row: sqlite3.Row) -> tuple[int, float, int]:
    """The order `reserve` takes jobs in; the same as the `offload_jobs_ready` index."""
    return (-row["priority"], row["due_at"], row["seq"])


def _only_acks(settlements: Sequence[Settlement]) -> bool:
    """Whether a batch is acks of distinct jobs (`Store._ack_many` may take it)."""
    ids = {item.lease.job_id for item in settlements if item.ending is Ending.ACK}
    return len(ids) == len(settlements)


def _id_list(job_ids: Sequence[str] | None) -> str | None:
    return None if job_ids is None else json.dumps(list(job_ids))


class Store:
    """Every broker operation as one synchronous transaction on one connection."""

    def __init__(self, conn: sqlite3.Connection, clock: Clock, retention_s: float) -> None:
        self._conn = conn
        self._clock = clock
        self._retention_s = retention_s
        # The open write's count changes: (queue, state) -> jobs in or out (`_move`).
        self._moves: Counter[tuple[str, str]] = Counter()
        # A broker dropped without close() still closes its connection when collected
        # (Python 3.13 warns about an sqlite3 connection collected open).
        self._closer = weakref.finalize(self, conn.close)

    @classmethod
    def open(cls, path: Path, clock: Clock, retention_s: float) -> Store:
        """Open (creating if needed) the database file and install the schema.

        Raises:
            ConfigurationError: the file is not an SQLite database, or has a newer
                offload schema.
        """
        return cls(connect(path), clock, retention_s)

    def close(self) -> None:
        self._closer()

    # The surface that statements kept in modules of their own (`_operate.py`) run on:
    # the connection, and the write transaction every other operation uses.

    @property
    def conn(self) -> sqlite3.Connection:
        return self._conn

    def write(self) -> AbstractContextManager[float]:
        """One BEGIN IMMEDIATE transaction, as `_write`; yields `now`."""
        return self._write()

    def run(self, fn: Callable[[Store, *Ts], T], *args: *Ts) -> T:
        """`fn(self, *args)`, retried while another connection holds the lock."""
        return retry_busy(lambda: fn(self, *args))

    @contextmanager
    def _write(self) -> Iterator[float]:
        """One BEGIN IMMEDIATE transaction; yields `now`, read once the write lock is
        held, so that times written by concurrent processes never run backwards. The
        job moves it noted go into the counters just before the commit."""
        conn = self._conn
        conn.execute("BEGIN IMMEDIATE")
        try:
            yield self._clock.now()
            if self._moves:
                rows = [(q, s, n) for (q, s), n in self._moves.items() if n]
                conn.executemany(_Q["count_add"], rows)
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise
        finally:
            self._moves.clear()

    def _move(self, queues: Iterable[str], old: str | None, new: str | None) -> None:
        """Note that a job of each of `queues` (one entry per job) left state `old`
        (None: it is new) for `new` (None: it was deleted), for the open write."""
        moves = self._moves
        was, now = (None if s is None else str(s) for s in (old, new))  # JobState: its value
        for queue in queues:
            if was is not None:
                moves[queue, was] -= 1
            if now is not None:
                moves[queue, now] += 1

    @contextmanager
    def _snapshot(self) -> Iterator[None]:
        """A read transaction, so that several SELECTs see one state of the file."""
        conn = self._conn
        conn.execute("BEGIN")
        try:
            yield
        finally:
            conn.execute("COMMIT")

    def _touch_queues(self, known: set[str], ready: set[str]) -> None:
        """Record `known` queues, and tell `wait` in every process that `ready` ones
        have work ready now."""
        rows = [(q, int(q in ready)) for q in sorted(known | ready)]
        self._conn.executemany(_Q["touch_queue"], rows)

    def _signal(self, ready: set[str]) -> None:
        self._touch_queues(set(), ready)

    def _count_ends(self, ends: Iterable[tuple[str, Outcome]], now: float) -> None:
        """Add jobs that ended now to `offload_finished`: one upsert per queue and
        outcome, in the caller's transaction (the one that ended them)."""
        tally = Counter(ends)
        if tally:
            minute = minute_of(now)
            rows = [(minute, q, outcome.value, n) for (q, outcome), n in sorted(tally.items())]
            self._conn.executemany(_Q["finished_add"], rows)

    # -- producer -------------------------------------------------------------------------

    def enqueue(
        self, jobs: Sequence[tuple[Envelope, bytes]], max_depth: int | None
    ) -> tuple[list[EnqueueResult], set[str]]:
        """Insert the batch in one transaction. Returns the results, and the queues of
        the jobs ready now (so the broker wakes their waiters)."""
        if not jobs:
            return [], set()
        with self._write() as now:
            results, ready = self._add(jobs, max_depth, now, _Q["insert_job"])
        return results, ready

    def _add(
        self, jobs: Sequence[tuple[Envelope, bytes]], max_depth: int | None, now: float, sql: str
    ) -> tuple[list[EnqueueResult], set[str]]:
        """`enqueue`'s work inside the caller's transaction, inserting with `sql`
        (`insert_job`, or `insert_ledger_job` for `_ledger.record`)."""
        results: list[EnqueueResult] = []
        known: set[str] = set()
        ready: set[str] = set()
        if max_depth is not None:
            self._check_depth(jobs, max_depth)
        for envelope, payload in jobs:
            created, state = self._insert(envelope, payload, now, sql)
            if created:
                self._moves[envelope.queue, state] += 1
                results.append(EnqueueResult(envelope.id, True))
                known.add(envelope.queue)
                if state == JobState.QUEUED:
                    ready.add(envelope.queue)
            else:
                results.append(EnqueueResult(self._existing_id(envelope), False))
        self._touch_queues(known, ready)
        return results, ready

    def _check_depth(self, jobs: Sequence[tuple[Envelope, bytes]], max_depth: int) -> None:
        adding = adding_per_queue(jobs)
        depth = _Q["depth"]
        depths = {q: int(self._conn.execute(depth, (q,)).fetchone()[0]) for q in adding}
        check_depth(adding, depths, max_depth)

    def _insert(self, env: Envelope, payload: bytes, now: float, sql: str) -> tuple[bool, str]:
        due_at = max(env.not_before or now, now)
        state = JobState.SCHEDULED.value if due_at > now else JobState.QUEUED.value
        params = (
            env.id,
            env.queue,
            env.task,
            state,
            env.priority,
            env.max_attempts,
            env.key,
            env.created_at or now,
            due_at,
            env.expires_at,
            payload,
            int(env.has_follow_ups),
        )
        return self._conn.execute(sql, params).rowcount == 1, state

    def _existing_id(self, env: Envelope) -> str:
        """The job an insert collided with: the holder of the key, else (a re-enqueue
        of the very same envelope) the job with this id."""
        if env.key is not None:
            row = self._conn.execute(_Q["id_for_key"], (env.key,)).fetchone()
            if row is not None:
                return str(row[0])
        return env.id

    # -- consumer -------------------------------------------------------------------------

    def reserve(
        self, queues: Sequence[str], worker_id: str, lease_s: float, limit: int
    ) -> tuple[list[Lease], list[str]]:
        """Returns the leases, and the ids of the jobs that expired on the way (so the
        broker wakes their `wait_finished`)."""
        with self._write() as now:
            expired = self._make_ready(now)
            if limit <= 0:
                return [], expired
            deadline = now + lease_s
            leases: list[Lease] = []
            updates: list[tuple[str, float, str, float, int]] = []
            for row in self._best_ready(queues, limit):
                token = os.urandom(12).hex()
                updates.append((token, now, worker_id, deadline, row["seq"]))
                payload = blob(row["payload"])
                lease = Lease(row["id"], token, row["queue"], row["attempt"] + 1, deadline, payload)
                leases.append(lease)
            self._conn.executemany(_Q["lease_job"], updates)
            self._move((lease.queue for lease in leases), JobState.QUEUED, JobState.RUNNING)
        return leases, expired

    def _make_ready(self, now: float) -> list[str]:
        """Promote due jobs, reclaim lapsed leases, expire stale waiting jobs: each an
        index range scan that finds nothing in the common case. Returns the expired ids."""
        conn = self._conn
        promoted = conn.execute(_Q["promote_due"], {"now": now}).fetchall()
        self._move((row[0] for row in promoted), JobState.SCHEDULED, JobState.QUEUED)
        params = {"now": now, "error": _LEASE_EXPIRED}
        reclaimed = conn.execute(_Q["reclaim_lapsed"], params).fetchall()
        self._move((row[0] for row in reclaimed), JobState.RUNNING, JobState.QUEUED)
        return self._expire(now)

    def _expire(self, now: float) -> list[str]:
        """Expire the waiting jobs past their `expires_at`, recording them in the outbox
        (same transaction: the caller's). Returns their ids."""
        conn = self._conn
        rows = conn.execute(_Q["expiring"], {"now": now}).fetchall()
        if not rows:
            return []
        purge_at = now + self._retention_s
        conn.executemany(_Q["expire_job"], [(now, purge_at, row["seq"]) for row in rows])
        conn.executemany(_Q["outbox_add"], [(row["id"],) for row in rows])
        for row in rows:
            self._move((row["queue"],), row["state"], JobState.EXPIRED)
        self._count_ends(((row["queue"], Outcome.EXPIRED) for row in rows), now)
        return [row["id"] for row in rows]

    def _best_ready(self, queues: Sequence[str], limit: int) -> list[sqlite3.Row]:
        """The first `limit` ready jobs across `queues`.

        One indexed query per queue, each stopping after `limit` rows, merged here: an
        `IN (...)` over several queues would make SQLite sort every ready job of them.
        """
        conn = self._conn
        per_queue = [
            conn.execute(_Q["ready_in_queue"], {"queue": q, "limit": limit}).fetchall()
            for q in dict.fromkeys(queues)
        ]
        if len(per_queue) == 1:
            return per_queue[0]
        return list(itertools.islice(heapq.merge(*per_queue, key=_ready_order), limit))

    def extend(self, leases: Sequence[Lease], lease_s: float) -> list[bool]:
        if not leases:
            return []
        with self._write() as now:
            deadline = now + lease_s
            sql = _Q["extend_lease"]
            return [
                self._conn.execute(sql, (deadline, lease.job_id, lease.token)).rowcount == 1
                for lease in leases
            ]

    def settle_many(self, settlements: Sequence[Settlement]) -> tuple[list[bool], bool]:
        """Every settlement in one transaction: one lock and one commit for the batch.
        Returns which leases were held, and whether a job went back due at once (so
        waiters should wake)."""
        held: list[bool] = []
        due: set[str] = set()
        ends: list[tuple[str, Outcome]] = []
        if _only_acks(settlements):
            with self._write() as now:
                return self._ack_many(settlements, now), False
        with self._write() as now:
            for item in settlements:
                params = self._settle_params(item, now)
                rows = self._conn.execute(_SETTLE[item.ending], params).fetchall()
                held.append(len(rows) == 1)
                if rows:
                    self._move((rows[0]["queue"],), JobState.RUNNING, _SETTLED[item.ending])
                    if item.ending.outcome is not None:
                        ends.append((rows[0]["queue"], item.ending.outcome))
                    if item.at is not None and item.at <= now:
                        due.add(rows[0]["queue"])
            self._count_ends(ends, now)
            if due:
                self._signal(due)
        return held, bool(due)

    def _ack_many(self, acks: Sequence[Settlement], now: float) -> list[bool]:
        """`settle_many` of acks of distinct jobs: one read of their leases and one
        `executemany` of the acks of those held (the write lock keeps them held
        in between), instead of a statement per job."""
        ids = json.dumps([item.lease.job_id for item in acks])
        running = {row[0]: row for row in self._conn.execute(_Q["running_tokens"], (ids,))}
        held: list[bool] = []
        params: list[dict[str, object]] = []
        queues: list[str] = []
        for item in acks:
            row = running.get(item.lease.job_id)
            ok = row is not None and row[1] == item.lease.token
            held.append(ok)
            if row is not None and ok:
                params.append(self._settle_params(item, now))
                queues.append(row[2])
        if params:
            self._conn.executemany(_Q["ack_held"], params)
            self._move(queues, JobState.RUNNING, JobState.SUCCEEDED)
            self._count_ends(((queue, Outcome.SUCCEEDED) for queue in queues), now)
        return held

    def _settle_params(self, item: Settlement, now: float) -> dict[str, object]:
        """The named parameters of the settlement's query; each reads the ones it needs."""
        ttl = self._retention_s if item.result_ttl_s is None else item.result_ttl_s
        return {
            "id": item.lease.job_id,
            "token": item.lease.token,
            "now": now,
            "at": item.at,
            "result": item.result,
            "error": None if item.error is None else encode_error(item.error).decode(),
            "purge_at": now + (ttl if item.ending is Ending.ACK else self._retention_s),
        }

    def cancel_requested(self, job_ids: Sequence[str]) -> set[str]:
        rows = self._conn.execute(_Q["cancel_requested"], (json.dumps(list(job_ids)),))
        return {row[0] for row in rows}

    def release(self, leases: Sequence[Lease]) -> bool:
        """Returns whether any job went back to its queue."""
        if not leases:
            return False
        queues: set[str] = set()
        with self._write():
            for lease in leases:
                params = {"id": lease.job_id, "token": lease.token}
                released = [row["queue"] for row in self._conn.execute(_Q["release"], params)]
                self._move(released, JobState.RUNNING, JobState.QUEUED)
                queues.update(released)
            self._signal(queues)
        return bool(queues)

    def cancel(self, job_id: str) -> bool:
        """A waiting job goes to the outbox in the cancel's transaction."""
        with self._write() as now:
            place = self._conn.execute(_Q["job_place"], (job_id,)).fetchone()
            if place is not None and place["state"] in (JobState.QUEUED, JobState.SCHEDULED):
                params = {"id": job_id, "now": now, "purge_at": now + self._retention_s}
                self._conn.execute(_Q["cancel_waiting"], params)
                self._conn.execute(_Q["outbox_add"], (job_id,))
                self._move((place["queue"],), place["state"], JobState.CANCELLED)
                self._count_ends([(place["queue"], Outcome.CANCELLED)], now)
                return True
            return self._conn.execute(_Q["flag_cancel"], {"id": job_id}).rowcount == 1

    def outbox(self, limit: int) -> list[Ended]:
        rows = self._conn.execute(_Q["outbox"], (limit,))
        return [Ended(row[0], JobState(row[1]), blob(row[2])) for row in rows]

    def clear_outbox(self, job_ids: Sequence[str]) -> list[str]:
        if not job_ids:
            return []
        with self._write():
            rows = self._conn.execute(_Q["outbox_clear"], (json.dumps(list(job_ids)),))
            return [row[0] for row in rows]

    def data_version(self) -> int:
        """`PRAGMA data_version`: changes when another connection commits (a cheap
        way to learn that something may have changed, reading no table)."""
        return int(self._conn.execute("PRAGMA data_version").fetchone()[0])

    def job_ended(self, job_id: str) -> bool:
        """Whether the job is terminal or unknown (`wait_finished` need not wait)."""
        row = self._conn.execute(_Q["job_state"], (job_id,)).fetchone()
        return row is None or JobState(row[0]) in TERMINAL_STATES

    # -- inspection -----------------------------------------------------------------------

    def counts(self, queues: Sequence[str] | None) -> dict[str, QueueStats]:
        """Per queue: the requested ones (even if unknown), else every known queue
        (including those whose jobs were all purged, as `queues` lists them)."""
        conn = self._conn
        with self._snapshot():
            if queues is None:
                names = self.queues()
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

    def finished(self, since: float, queues: Sequence[str] | None) -> list[Finished]:
        params = {"first": minute_of(since), "queues": _id_list(queues)}
        rows = self._conn.execute(_Q["finished"], params)
        return [Finished(r[0], int(r[1]), Outcome(r[2]), int(r[3])) for r in rows]

    def get_job(self, job_id: str) -> JobInfo | None:
        with self._snapshot():
            row = self._conn.execute(_Q["get_job"], (job_id,)).fetchone()
            progress = self._conn.execute(_Q["get_progress"], (job_id,)).fetchone()
        if row is None:
            return None
        info = job_info(row)
        return info if progress is None else replace(info, progress=decode_value(progress[0]))

    def set_progress(self, job_id: str, progress: bytes) -> None:
        with self._write():
            self._conn.execute(_Q["set_progress"], (job_id, progress))

    def find(self, key: str) -> JobInfo | None:
        row = self._conn.execute(_Q["find"], (key,)).fetchone()
        return None if row is None else job_info(row)

    def workflow_jobs(self, workflow_id: str, limit: int) -> list[JobInfo]:
        params = {"floor": id_floor(workflow_id), "wf": workflow_id, "limit": limit}
        return [job_info(row) for row in self._conn.execute(_Q["workflow_jobs"], params)]

    def list_jobs(
        self,
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
            index = self._created_walk_index(queue, state)
            return self._list_created(index, conditions, params, limit, cursor)
        if cursor:
            conditions.append("seq < ?")
            params.append(int(cursor))
        where = f"WHERE {' AND '.join(conditions)}" if conditions else ""
        sql = f"SELECT * FROM offload_jobs {where} ORDER BY seq DESC LIMIT ?"
        rows = self._conn.execute(sql, [*params, limit + 1]).fetchall()
        if len(rows) <= limit:
            return Page([job_info(row) for row in rows], None)
        last_seq = rows[limit - 1]["seq"] if limit > 0 else 0
        return Page([job_info(row) for row in rows[:limit]], str(last_seq))

    def _created_walk_index(self, queue: str | None, state: JobState | None) -> str:
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
        found = self._conn.execute(probe, [*args, DIRECT_MAX + 1]).fetchone()[0]
        return index if found <= DIRECT_MAX else "offload_jobs_created"

    def _list_created(
        self,
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
        rows = self._conn.execute(sql, [*params, limit + 1]).fetchall()
        page = [job_info(row) for row in rows[:limit]]
        if len(rows) <= limit or limit <= 0:
            return Page(page, None)
        last = rows[limit - 1]
        return Page(page, f"{float(last['created_at'])!r}:{last['seq']}")

    def replay_dead(self, queue: str | None, job_ids: Sequence[str] | None) -> int:
        with self._write() as now:
            params = {"now": now, "queue": queue, "ids": _id_list(job_ids)}
            rows = self._conn.execute(_Q["replay_dead"], params).fetchall()
            self._move((row["queue"] for row in rows), JobState.DEAD, JobState.QUEUED)
            self._signal({row["queue"] for row in rows})
        return len(rows)

    def purge_dead(
        self, queue: str | None, job_ids: Sequence[str] | None, older_than: float | None
    ) -> int:
        with self._write() as now:
            params = {
                "now": now,
                "queue": queue,
                "ids": _id_list(job_ids),
                "cutoff": None if older_than is None else now - older_than,
            }
            rows = self._conn.execute(_Q["purge_dead"], params).fetchall()
            self._move((row["queue"] for row in rows), JobState.DEAD, None)
        return len(rows)

    def queues(self) -> list[str]:
        return [row["name"] for row in self._conn.execute(_Q["queues"])]

    # -- coordination and housekeeping ----------------------------------------------------

    def take_rate(self, key: str, limit: int, per_s: float) -> float:
        with self._write() as now:
            row = self._conn.execute(_Q["rate_tat"], (key,)).fetchone()
            tat, wait = gcra(None if row is None else row[0], now, limit, per_s)
            if tat is not None:
                self._conn.execute(_Q["rate_set"], (key, tat))
        return wait

    def join(
        self, group_id: str, member_id: str, index: int, total: int, outcome: bytes
    ) -> list[bytes] | None:
        conn = self._conn
        with self._write() as now:
            conn.execute(_Q["join_insert"], (group_id, member_id, index, outcome, now))
            if conn.execute(_Q["join_count"], (group_id,)).fetchone()[0] < total:
                return None
            return [bytes(row[0]) for row in conn.execute(_Q["join_outcomes"], (group_id,))]

    def acquire_slot(self, key: str, limit: int, holder: str, ttl_s: float) -> bool:
        conn = self._conn
        with self._write() as now:
            conn.execute(_Q["slots_lapsed"], (key, now))
            params = {"key": key, "holder": holder, "until": now + ttl_s, "limit": limit}
            if conn.execute(_Q["slot_renew"], params).rowcount:
                return True
            return bool(conn.execute(_Q["slot_take"], params).rowcount)

    def compare_and_set(
        self, name: str, expected: str | None, new: str, ttl_s: float
    ) -> str | None:
        with self._write() as now:
            row = self._conn.execute(_Q["register_get"], (name, now)).fetchone()
            current = None if row is None else str(row[0])
            if current not in (expected, new):
                return current
            self._conn.execute(_Q["register_set"], (name, new, now + ttl_s))
        return new

    def release_slot(self, key: str, holder: str) -> None:
        with self._write():
            self._conn.execute(_Q["slot_release"], (key, holder))

    def register_worker(self, info: WorkerInfo, ttl_s: float) -> None:
        queues = encode_value(info.queues, what="worker queues").decode()
        extra = encode_value(info.extra, what="worker extra").decode()
        with self._write() as now:
            params: dict[str, Any] = {
                "id": info.id,
                "hostname": info.hostname,
                "pid": info.pid,
                "queues": queues,
                "concurrency": info.concurrency,
                "started_at": info.started_at,
                "last_seen": now,
                "running": info.running,
                "processed": info.processed,
                "extra": extra,
                "expires_at": now + ttl_s,
            }
            self._conn.execute(_Q["register_worker"], params)

    def unregister_worker(self, worker_id: str) -> None:
        with self._write():
            self._conn.execute(_Q["unregister_worker"], (worker_id,))

    def workers(self) -> list[WorkerInfo]:
        rows = self._conn.execute(_Q["live_workers"], (self._clock.now(),))
        return [worker_info(row) for row in rows]

    def sweep(self) -> tuple[SweepReport, list[str]]:
        """Returns the report, and the ids of the jobs that expired (to wake waiters)."""
        conn = self._conn
        with self._write() as now:
            expired = self._expire(now)
            gone = conn.execute(_Q["purge_finished"], {"now": now}).fetchall()
            for row in gone:
                self._move((row["queue"],), row["state"], None)
            purged = len(gone)
            removed = conn.execute(_Q["forget_lapsed_workers"], (now,)).rowcount
            conn.execute(_Q["rates_idle"], (now,))
            conn.execute(_Q["slots_all_lapsed"], (now,))
            conn.execute(_Q["registers_lapsed"], (now,))
            conn.execute(_Q["joins_lapsed"], (now - self._retention_s,))
            conn.execute(_Q["progress_orphans"])
            conn.execute(_Q["outbox_orphans"])
            conn.execute(_Q["finished_prune"], (minute_of(now - FINISHED_KEEP_S),))
        report = SweepReport(expired=len(expired), purged=purged, workers_removed=removed)
        return report, expired

    # -- wakeups --------------------------------------------------------------------------

    def next_due(self, queues: Sequence[str]) -> float | None:
        row = self._conn.execute(_Q["next_due"], (json.dumps(list(queues)),)).fetchone()
        return None if row is None else float(row[0])

    def signal_mark(self, queues: Sequence[str]) -> tuple[int, int]:
        """Where `wait` starts from: the connection's data version and the sum of the
        queues' signal counters."""
        version = self.data_version()
        total = self._conn.execute(_Q["signal_total"], (json.dumps(list(queues)),)).fetchone()
        return version, int(total[0])

    def poll_signal(
        self, queues: Sequence[str], mark: tuple[int, int]
    ) -> tuple[tuple[int, int], bool]:
        """Whether another connection made work ready in `queues` since `mark`.

        `PRAGMA data_version` changes only when another connection commits and reads no
        table, so an idle poll costs next to nothing; the counters are read only then.
        """
        version = self.data_version()
        if version == mark[0]:
            return mark, False
        new_mark = self.signal_mark(queues)
        return new_mark, new_mark[1] != mark[1]
