"""The memory broker's job table: every job's record, the indexes beside them (keys,
ready heaps per queue, the schedule, expiries) and the state of the other roles, with
the lock-held operations that keep them consistent.

Apart from the broker (`offload.brokers.memory`) so that the roles there read as one
lock-taking call each into this table, and inspection (`_inspect.py`) reads the same
records without knowing how they are indexed.
"""

from __future__ import annotations

import heapq
import itertools
import os
import threading
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

from offload.brokers._depth import adding_per_queue, check_depth
from offload.brokers._wakeup import JobWaiters, Wakeup
from offload.brokers.base import (
    LEASE_EXPIRED,
    EnqueueResult,
    JobInfo,
    Lease,
    Outcome,
    WorkerInfo,
)
from offload.brokers.part import Part
from offload.brokers.records import minute_of
from offload.envelope import Envelope, JobState
from offload.errors import LeaseLost

__all__ = ["JobTable", "Record"]


@dataclass(slots=True)
class Record:
    """One job in the table: its `JobInfo`, and what only this broker keeps beside it
    (enqueue order, lease token, purge time, the version that marks heap entries
    stale, a ledger job's copy)."""

    info: JobInfo
    seq: int
    token: str | None = None
    purge_at: float | None = None
    version: int = 0
    #: A ledger job (`Ledger`): another part delivers it, so it is never in the heaps.
    ledger: bool = False
    #: A ledger job's current copy, and until when it may stay unconfirmed.
    stamp: str | None = None
    publish_by: float | None = None


class JobTable(Part):
    """The state of a `MemoryBroker`, in dicts and heaps, and the operations on it.
    Every method here expects the caller to hold `_lock`: the broker's methods take it
    once per operation, which is what makes each one atomic."""

    def __init__(self, url: str, **kwargs: object) -> None:
        super().__init__(url, **kwargs)  # type: ignore[arg-type]
        self._lock = threading.Lock()
        self._jobs: dict[str, Record] = {}
        self._keys: dict[str, str] = {}
        self._joins: dict[str, dict[str, tuple[int, bytes]]] = {}
        self._progress: dict[str, Any] = {}
        self._ready: dict[str, list[tuple[int, float, int, int, str]]] = {}
        self._scheduled: list[tuple[float, int, str]] = []
        self._running: set[str] = set()
        self._workers: dict[str, tuple[WorkerInfo, float]] = {}
        self._queues: set[str] = set()
        self._expiries: list[tuple[float, str]] = []
        self._seq = itertools.count(1)
        self._wakeup = Wakeup()
        self._ended = JobWaiters()  # `wait_finished`
        self._outbox: dict[str, None] = {}  # ids, oldest first (`outbox`)
        self._rates: dict[str, float] = {}  # rate key -> theoretical arrival time
        self._slots: dict[str, dict[str, float]] = {}  # slot key -> holder -> until
        self._registers: dict[str, tuple[str, float]] = {}  # name -> (value, until)
        self._paused: dict[str, float] = {}  # pause flag -> when raised
        self._attempts: dict[str, tuple[list[tuple[str, bytes]], int]] = {}  # records, dropped
        self._finished: dict[tuple[str, int, Outcome], int] = {}  # (queue, minute, outcome)

    # -- helpers (call with the lock held) ----------------------------------------------

    def _set(self, rec: Record, **changes: object) -> None:
        rec.info = replace(rec.info, **changes)  # type: ignore[arg-type]

    def _push_ready(self, rec: Record) -> None:
        rec.version += 1
        if rec.ledger:
            return  # the delivery holds its copy
        info = rec.info
        heap = self._ready.setdefault(info.queue, [])
        heapq.heappush(heap, (-info.priority, info.due_at, rec.seq, rec.version, info.id))

    def _push_scheduled(self, rec: Record) -> None:
        rec.version += 1
        if rec.ledger:
            return  # `due` publishes it
        heapq.heappush(self._scheduled, (rec.info.due_at, rec.version, rec.info.id))

    def _expire_due(self, now: float) -> int:
        """Expire every waiting job past `expires_at`. A running job's entry is kept:
        if it comes back (retry, lapsed lease, release) it must still expire."""
        expired = 0
        keep: list[tuple[float, str]] = []
        while self._expiries and self._expiries[0][0] <= now:
            entry = heapq.heappop(self._expiries)
            rec = self._jobs.get(entry[1])
            if rec is None:
                continue
            if rec.info.state in (JobState.QUEUED, JobState.SCHEDULED):
                expired += self._expire_if_due(rec, now)
            elif rec.info.state is JobState.RUNNING:
                keep.append(entry)
        for entry in keep:
            heapq.heappush(self._expiries, entry)
        return expired

    def _promote_and_reclaim(self, now: float) -> None:
        while self._scheduled and self._scheduled[0][0] <= now:
            _, version, job_id = heapq.heappop(self._scheduled)
            rec = self._jobs.get(job_id)
            if rec and rec.version == version and rec.info.state is JobState.SCHEDULED:
                self._set(rec, state=JobState.QUEUED)
                self._push_ready(rec)
        for job_id in list(self._running):  # ledger jobs are never in it: see `claim`
            rec = self._jobs[job_id]
            deadline = rec.info.lease_deadline
            if deadline is not None and deadline <= now:
                self._running.discard(job_id)
                rec.token = None
                self._set(
                    rec,
                    state=JobState.QUEUED,
                    lease_deadline=None,
                    worker_id=None,
                    error=LEASE_EXPIRED,
                )
                self._push_ready(rec)

    def _expire_if_due(self, rec: Record, now: float) -> bool:
        expires_at = rec.info.expires_at
        if expires_at is None or expires_at > now:
            return False
        self._end_unrun(rec, JobState.EXPIRED, now)
        return True

    def _leased(self, lease: Lease) -> Record:
        rec = self._jobs.get(lease.job_id)
        if rec is None or rec.token != lease.token or rec.info.state is not JobState.RUNNING:
            raise LeaseLost(f"lease on job {lease.job_id} is no longer held")
        return rec

    def _finish(self, rec: Record) -> None:
        rec.token = None
        rec.version += 1
        self._running.discard(rec.info.id)
        self._ended.notify(rec.info.id)  # spurious for a retry, release or defer: allowed

    def _count_end(self, queue: str, outcome: Outcome, now: float) -> None:
        """Count an end for `finished`, in the operation that ends the job."""
        slot = (queue, minute_of(now), outcome)
        self._finished[slot] = self._finished.get(slot, 0) + 1

    def _end_unrun(self, rec: Record, state: JobState, now: float) -> None:
        """A waiting job ends without a worker: recorded in the outbox (`outbox`)."""
        self._count_end(rec.info.queue, Outcome(state.value), now)
        rec.version += 1
        rec.purge_at = now + self.retention_s
        self._set(rec, state=state, finished_at=now)
        self._outbox[rec.info.id] = None
        self._ended.notify(rec.info.id)

    def _insert(
        self, jobs: Sequence[tuple[Envelope, bytes]], max_depth: int | None, *, ledger: bool
    ) -> tuple[list[EnqueueResult], list[Record]]:
        """`enqueue` with the lock held: the results, and the records created."""
        results: list[EnqueueResult] = []
        created: list[Record] = []
        now = self.clock.now()
        if max_depth is not None:
            self._check_depth(jobs, max_depth)
        for env, payload in jobs:
            if env.key is not None and env.key in self._keys:
                results.append(EnqueueResult(self._keys[env.key], False))
                continue
            if env.id in self._jobs:  # the same envelope sent twice
                results.append(EnqueueResult(env.id, False))
                continue
            due_at = max(env.not_before or now, now)
            delayed = due_at > now
            info = JobInfo(
                id=env.id,
                task=env.task,
                queue=env.queue,
                state=JobState.SCHEDULED if delayed else JobState.QUEUED,
                priority=env.priority,
                attempt=0,
                max_attempts=env.max_attempts,
                key=env.key,
                created_at=env.created_at or now,
                due_at=due_at,
                expires_at=env.expires_at,
                started_at=None,
                finished_at=None,
                worker_id=None,
                lease_deadline=None,
                error=None,
                payload=payload,
            )
            rec = Record(info, next(self._seq), ledger=ledger)
            self._jobs[env.id] = rec
            self._queues.add(env.queue)
            if env.expires_at is not None:
                heapq.heappush(self._expiries, (env.expires_at, env.id))
            if env.key is not None:
                self._keys[env.key] = env.id
            if delayed:
                self._push_scheduled(rec)
            else:
                self._push_ready(rec)
            results.append(EnqueueResult(env.id, True))
            created.append(rec)
        return results, created

    def _check_depth(self, jobs: Sequence[tuple[Envelope, bytes]], max_depth: int) -> None:
        adding = adding_per_queue(jobs)
        waiting = (JobState.QUEUED, JobState.SCHEDULED)
        depths = dict.fromkeys(adding, 0)
        for rec in self._jobs.values():
            if rec.info.queue in depths and rec.info.state in waiting:
                depths[rec.info.queue] += 1
        check_depth(adding, depths, max_depth)

    def _start(self, rec: Record, worker_id: str, now: float, deadline: float) -> tuple[str, int]:
        """Put `rec` under a new lease (`reserve` and the ledger's `claim`): its token
        and attempt number."""
        token = os.urandom(12).hex()
        rec.token = token
        attempt = rec.info.attempt + 1
        self._set(
            rec,
            state=JobState.RUNNING,
            attempt=attempt,
            started_at=now,
            worker_id=worker_id,
            lease_deadline=deadline,
        )
        return token, attempt

    def _pop_best(self, queues: Sequence[str]) -> Record | None:
        best: list[tuple[int, float, int, int, str]] | None = None
        for queue in queues:
            heap = self._ready.get(queue)
            while heap:
                _, _, _, version, job_id = heap[0]
                rec = self._jobs.get(job_id)
                if rec and rec.version == version and rec.info.state is JobState.QUEUED:
                    break
                heapq.heappop(heap)  # stale entry
            if heap and (best is None or heap[0] < best[0]):
                best = heap
        if best is None:
            return None
        return self._jobs[heapq.heappop(best)[4]]

    def _delete(self, rec: Record) -> None:
        del self._jobs[rec.info.id]
        self._attempts.pop(rec.info.id, None)
        if rec.info.key is not None and self._keys.get(rec.info.key) == rec.info.id:
            del self._keys[rec.info.key]
