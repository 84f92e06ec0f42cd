"""The synchronous half of the SQLite broker: one connection, one transaction per call.

`SQLiteBroker` runs every method of a `Store` on its single executor thread, so a store
is never used by two threads at once and needs no lock of its own. Each write is one
`BEGIN IMMEDIATE` transaction: SQLite's write lock is taken before the first read, so
no other process can change a row between the read and the update that depends on it,
and a busy file makes the caller wait before it has done anything, never halfway.

Methods take positional arguments only, so the broker can pass them to the executor
as plain `(function, *args)` with their types intact.

This module holds the job lifecycle (enqueue, reserve, settle, release, cancel, the
outbox, sweep) and the transactions; the rest are functions of a store kept in modules
of their own and run the same way (`Store.run`): inspection (`_inspect.py`), flow
(`_flow.py`: rates, slots, joins, registers), operations (`_operate.py`) and the
ledger (`_ledger.py`).

Job counts (`_inspect.counts`, the table `offload_counts`) are kept here, not by triggers: every
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
from pathlib import Path
from typing import Any, TypeVar, TypeVarTuple

from offload.brokers._depth import adding_per_queue, check_depth
from offload.brokers._sql import named_queries
from offload.brokers._sql_rows import blob, worker_info
from offload.brokers.base import (
    LEASE_EXPIRED,
    Ended,
    Ending,
    EnqueueResult,
    Lease,
    Outcome,
    Settlement,
    SweepReport,
    WorkerInfo,
)
from offload.brokers.records import FINISHED_KEEP_S, minute_of
from offload.brokers.sqlite._connection import connect, retry_busy
from offload.clock import Clock
from offload.codec import encode_error, encode_value
from offload.envelope import TERMINAL_STATES, Envelope, JobState

__all__ = ["Store"]

T = TypeVar("T")
Ts = TypeVarTuple("Ts")

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

    # The surface that statements kept in modules of their own (`_inspect.py`,
    # `_flow.py`, `_operate.py`) run on: the connection, the write transaction every
    # other operation uses, the read snapshot, and the notes a write keeps of its moves
    # and of the queues it made ready.

    @property
    def conn(self) -> sqlite3.Connection:
        return self._conn

    def write(self) -> AbstractContextManager[float]:
        """One BEGIN IMMEDIATE transaction, as `_write`; yields `now`."""
        return self._write()

    def snapshot(self) -> AbstractContextManager[None]:
        """A read transaction, as `_snapshot`."""
        return self._snapshot()

    def move(self, queues: Iterable[str], old: str | None, new: str | None) -> None:
        """Note job moves for the open write's counters, as `_move`."""
        self._move(queues, old, new)

    def signal(self, ready: set[str]) -> None:
        """Tell `wait` in every process that `ready` queues have work, as `_signal`."""
        self._signal(ready)

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

    # -- housekeeping: the worker registry and sweep --------------------------------------
    # (Inspection is in `_inspect.py`; rate limits, slots, joins and registers in `_flow.py`.)

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
