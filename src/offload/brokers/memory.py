"""`memory://`: the whole broker contract in process memory, for tests and examples.

A real implementation, not a mock: it passes the same conformance suite as every other
broker. Each operation runs under one lock, which is what makes it atomic; it is shared
by every event loop and thread of the process, but not across processes.
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
    Broker,
    Capabilities,
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
from offload.brokers.records import FINISHED_KEEP_S, Outgoing, created_cursor, in_range, minute_of
from offload.brokers.roles import PUBLISH_GRACE_S, Ledger
from offload.codec import decode_value
from offload.envelope import TERMINAL_STATES, Envelope, JobState
from offload.errors import LeaseLost
from offload.limits import gcra

__all__ = ["MemoryBroker"]

#: Endings that put the job back in the schedule (a worker may wait for it).
_RESCHEDULING = (Ending.RETRY, Ending.DEFER)


@dataclass(slots=True)
class _Record:
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


class MemoryBroker(Broker, Ledger):
    """Jobs in dicts and heaps; state is lost with the process. Also the state store
    of a delivery-only broker (`Ledger`): its jobs are kept here but not in the heaps,
    and `due` finds them by a scan (this broker is for tests)."""

    capabilities = Capabilities(push_wakeup=True, cross_process=False, push_results=True)

    def __init__(self, url: str = "memory://", **kwargs: object) -> None:
        super().__init__(url, **kwargs)  # type: ignore[arg-type]
        self._lock = threading.Lock()
        self._jobs: dict[str, _Record] = {}
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

    def _set(self, rec: _Record, **changes: object) -> None:
        rec.info = replace(rec.info, **changes)  # type: ignore[arg-type]

    def _push_ready(self, rec: _Record) -> None:
        rec.version += 1
        if rec.ledger:
            return  # the delivery holds its copy
        info = rec.info
        heap = self._ready.setdefault(info.queue, [])
        heapq.heappush(heap, (-info.priority, info.due_at, rec.seq, rec.version, info.id))

    def _push_scheduled(self, rec: _Record) -> None:
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

    def _expire_if_due(self, rec: _Record, now: float) -> bool:
        expires_at = rec.info.expires_at
        if expires_at is None or expires_at > now:
            return False
        self._end_unrun(rec, JobState.EXPIRED, now)
        return True

    def _leased(self, lease: Lease) -> _Record:
        rec = self._jobs.get(lease.job_id)
        if rec is None or rec.token != lease.token or rec.info.state is not JobState.RUNNING:
            raise LeaseLost(f"lease on job {lease.job_id} is no longer held")
        return rec

    def _finish(self, rec: _Record) -> None:
        rec.token = None
        rec.version += 1
        self._running.discard(rec.info.id)
        self._ended.notify(rec.info.id)  # spurious for a retry, release or defer: allowed

    def _count_end(self, queue: str, outcome: Outcome, now: float) -> None:
        """Count an end for `finished`, in the operation that ends the job."""
        slot = (queue, minute_of(now), outcome)
        self._finished[slot] = self._finished.get(slot, 0) + 1

    def _end_unrun(self, rec: _Record, state: JobState, now: float) -> None:
        """A waiting job ends without a worker: recorded in the outbox (`outbox`)."""
        self._count_end(rec.info.queue, Outcome(state.value), now)
        rec.version += 1
        rec.purge_at = now + self.retention_s
        self._set(rec, state=state, finished_at=now)
        self._outbox[rec.info.id] = None
        self._ended.notify(rec.info.id)

    # -- producer ---------------------------------------------------------------------

    async def enqueue(
        self, jobs: Sequence[tuple[Envelope, bytes]], *, max_depth: int | None = None
    ) -> list[EnqueueResult]:
        with self._lock:
            results, _ = self._insert(jobs, max_depth, ledger=False)
        self._wakeup.notify()
        return results

    def _insert(
        self, jobs: Sequence[tuple[Envelope, bytes]], max_depth: int | None, *, ledger: bool
    ) -> tuple[list[EnqueueResult], list[_Record]]:
        """`enqueue` with the lock held: the results, and the records created."""
        results: list[EnqueueResult] = []
        created: list[_Record] = []
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
            rec = _Record(info, next(self._seq), ledger=ledger)
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

    async def reserve(
        self, queues: Sequence[str], *, worker_id: str, lease_s: float, limit: int
    ) -> list[Lease]:
        leases: list[Lease] = []
        with self._lock:
            now = self.clock.now()
            self._promote_and_reclaim(now)
            self._expire_due(now)
            while len(leases) < limit:
                rec = self._pop_best(queues)
                if rec is None:
                    break
                if self._expire_if_due(rec, now):
                    continue
                deadline = now + lease_s
                token, attempt = self._start(rec, worker_id, now, deadline)
                self._running.add(rec.info.id)
                leases.append(
                    Lease(rec.info.id, token, rec.info.queue, attempt, deadline, rec.info.payload)
                )
        return leases

    def _start(self, rec: _Record, worker_id: str, now: float, deadline: float) -> tuple[str, int]:
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

    def _pop_best(self, queues: Sequence[str]) -> _Record | None:
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

    async def wait(self, queues: Sequence[str], timeout_s: float) -> None:
        await self._wakeup.wait(timeout_s)

    async def next_due(self, queues: Sequence[str]) -> float | None:
        with self._lock:
            wanted = set(queues)
            due = [
                rec.info.due_at
                for rec in self._jobs.values()
                if rec.info.state is JobState.SCHEDULED and rec.info.queue in wanted
            ]
        return min(due, default=None)

    async def extend(self, leases: Sequence[Lease], lease_s: float) -> list[bool]:
        out: list[bool] = []
        with self._lock:
            now = self.clock.now()
            for lease in leases:
                rec = self._jobs.get(lease.job_id)
                ok = (
                    rec is not None
                    and rec.token == lease.token
                    and rec.info.state is JobState.RUNNING
                )
                if ok and rec is not None:
                    self._set(rec, lease_deadline=now + lease_s)
                out.append(ok)
        return out

    async def settle_many(self, settlements: Sequence[Settlement]) -> list[bool]:
        held: list[bool] = []
        with self._lock:
            now = self.clock.now()
            for item in settlements:
                try:
                    rec = self._leased(item.lease)
                except LeaseLost:
                    held.append(False)
                    continue
                self._finish(rec)
                self._settle(rec, item, now)
                held.append(True)
        if any(item.ending in _RESCHEDULING for item in settlements):
            self._wakeup.notify()
        return held

    def _settle(self, rec: _Record, item: Settlement, now: float) -> None:
        ending = item.ending
        if ending.outcome is not None:
            self._count_end(rec.info.queue, ending.outcome, now)
        if ending is Ending.ACK:
            ttl_s = self.retention_s if item.result_ttl_s is None else item.result_ttl_s
            rec.purge_at = now + ttl_s
            self._set(
                rec,
                state=JobState.SUCCEEDED,
                result=item.result,
                finished_at=now,
                lease_deadline=None,
                error=None,
            )
        elif ending in _RESCHEDULING:
            changes: dict[str, object] = {"error": item.error}
            if ending is Ending.DEFER:
                changes = {"attempt": max(rec.info.attempt - 1, 0), "worker_id": None}
            self._set(rec, state=JobState.SCHEDULED, due_at=item.at, lease_deadline=None, **changes)
            self._push_scheduled(rec)
        else:
            if ending is Ending.CANCEL:
                rec.purge_at = now + self.retention_s
            self._set(
                rec, state=ending.state, error=item.error, finished_at=now, lease_deadline=None
            )

    async def release(self, leases: Sequence[Lease]) -> None:
        with self._lock:
            for lease in leases:
                try:
                    rec = self._leased(lease)
                except LeaseLost:
                    continue
                self._finish(rec)
                self._set(
                    rec,
                    state=JobState.QUEUED,
                    attempt=max(rec.info.attempt - 1, 0),
                    lease_deadline=None,
                    worker_id=None,
                )
                self._push_ready(rec)
        self._wakeup.notify()

    async def cancel(self, job_id: str) -> bool:
        with self._lock:
            rec = self._jobs.get(job_id)
            if rec is None:
                return False
            state = rec.info.state
            if state in (JobState.QUEUED, JobState.SCHEDULED):
                self._end_unrun(rec, JobState.CANCELLED, self.clock.now())
                return True
            if state is JobState.RUNNING:
                self._set(rec, cancel_requested=True)
                return True
            return False

    async def cancel_requested(self, leases: Sequence[Lease]) -> set[str]:
        with self._lock:
            found = (self._jobs.get(lease.job_id) for lease in leases)
            return {
                r.info.id
                for r in found
                if r is not None and r.info.cancel_requested and r.info.state is JobState.RUNNING
            }

    async def outbox(self, limit: int = 500) -> list[Ended]:
        with self._lock:
            entries: list[Ended] = []
            for job_id in list(self._outbox):
                rec = self._jobs.get(job_id)
                if rec is None:
                    del self._outbox[job_id]
                    continue
                entries.append(Ended(job_id, rec.info.state, rec.info.payload))
                if len(entries) >= limit:
                    break
            return entries

    async def clear_outbox(self, job_ids: Sequence[str]) -> list[str]:
        with self._lock:
            removed = [job_id for job_id in dict.fromkeys(job_ids) if job_id in self._outbox]
            for job_id in removed:
                del self._outbox[job_id]
            return removed

    async def wait_finished(self, job_id: str, timeout_s: float) -> None:
        async def ended() -> bool:
            rec = self._jobs.get(job_id)
            return rec is None or rec.info.state in TERMINAL_STATES

        await self._ended.wait(job_id, ended, timeout_s)

    # -- ledger: the state of jobs another part delivers ------------------------------

    def _copy(self, rec: _Record, now: float) -> Outgoing:
        """A new copy of a ledger job to publish, unconfirmed until `published`."""
        rec.stamp = os.urandom(8).hex()
        rec.publish_by = now + PUBLISH_GRACE_S
        info = rec.info
        return Outgoing(info.id, info.queue, info.priority, info.payload, rec.stamp)

    async def record(
        self, jobs: Sequence[tuple[Envelope, bytes]], *, max_depth: int | None = None
    ) -> tuple[list[EnqueueResult], list[Outgoing]]:
        with self._lock:
            now = self.clock.now()
            results, created = self._insert(jobs, max_depth, ledger=True)
            ready = [r for r in created if r.info.state is JobState.QUEUED]
            return results, [self._copy(rec, now) for rec in ready]

    async def published(self, jobs: Sequence[Outgoing]) -> None:
        with self._lock:
            for job in jobs:
                rec = self._jobs.get(job.job_id)
                if rec is not None and rec.stamp == job.stamp:
                    rec.publish_by = None

    async def due(self, queues: Sequence[str], *, limit: int) -> list[Outgoing]:
        with self._lock:
            now = self.clock.now()
            self._expire_due(now)
            wanted = set(queues)
            due = sorted(
                (rec for rec in self._jobs.values() if self._needs_copy(rec, wanted, now)),
                key=lambda rec: (rec.info.due_at, rec.seq),
            )
            out: list[Outgoing] = []
            for rec in due:
                if len(out) >= limit:
                    break
                if self._expire_if_due(rec, now):
                    continue
                if rec.info.state is JobState.SCHEDULED:
                    self._set(rec, state=JobState.QUEUED)
                out.append(self._copy(rec, now))
            return out

    @staticmethod
    def _needs_copy(rec: _Record, queues: set[str], now: float) -> bool:
        if not rec.ledger or rec.info.queue not in queues:
            return False
        if rec.info.state is JobState.SCHEDULED:
            return rec.info.due_at <= now
        return rec.info.state is JobState.QUEUED and (rec.publish_by or now + 1) <= now

    async def claim(
        self, delivered: Sequence[Lease], *, worker_id: str, lease_s: float
    ) -> list[Lease | None]:
        with self._lock:
            now = self.clock.now()
            return [self._claim(copy, worker_id, now + lease_s, now) for copy in delivered]

    def _claim(self, copy: Lease, worker_id: str, deadline: float, now: float) -> Lease | None:
        rec = self._jobs.get(copy.job_id)
        if rec is None or not rec.ledger or copy.stamp is None or copy.stamp != rec.stamp:
            return None
        state = rec.info.state
        if state is JobState.QUEUED and self._expire_if_due(rec, now):
            return None
        if state not in (JobState.QUEUED, JobState.RUNNING):
            return None
        rec.publish_by = None
        if state is JobState.RUNNING:  # its holder is gone: as a lapsed lease
            self._set(rec, error=LEASE_EXPIRED)
        token, attempt = self._start(rec, worker_id, now, deadline)
        info = rec.info
        return Lease(info.id, token, info.queue, attempt, deadline, info.payload, copy.stamp)

    # -- inspection -------------------------------------------------------------------

    async def counts(self, queues: Sequence[str] | None = None) -> dict[str, QueueStats]:
        with self._lock:
            wanted = set(queues) if queues is not None else None
            names = self._queues if queues is None else queues
            states: dict[str, dict[JobState, int]] = {q: {} for q in names}
            oldest: dict[str, float] = {}
            for rec in self._jobs.values():
                info = rec.info
                if wanted is not None and info.queue not in wanted:
                    continue
                per = states.setdefault(info.queue, {})
                per[info.state] = per.get(info.state, 0) + 1
                if info.state is JobState.QUEUED:
                    oldest[info.queue] = min(oldest.get(info.queue, info.due_at), info.due_at)
        return {
            q: QueueStats({s: per.get(s, 0) for s in JobState}, oldest.get(q))
            for q, per in sorted(states.items())
        }

    async def finished(self, since: float, queues: Sequence[str] | None = None) -> list[Finished]:
        first = minute_of(since)
        with self._lock:
            counted = [
                Finished(queue, minute, outcome, n)
                for (queue, minute, outcome), n in self._finished.items()
                if minute >= first and (queues is None or queue in queues)
            ]
        return sorted(counted, key=lambda f: (f.queue, f.minute, f.outcome))

    async def get_job(self, job_id: str) -> JobInfo | None:
        with self._lock:
            rec = self._jobs.get(job_id)
            if rec is None:
                self._progress.pop(job_id, None)
                return None
            progress = self._progress.get(job_id)
            return rec.info if progress is None else replace(rec.info, progress=progress)

    async def set_progress(self, job_id: str, progress: bytes) -> None:
        value = decode_value(progress)
        with self._lock:
            self._progress[job_id] = value

    async def find(self, key: str) -> JobInfo | None:
        with self._lock:
            job_id = self._keys.get(key)
            return self._jobs[job_id].info if job_id else None

    async def list_jobs(
        self,
        *,
        queue: str | None = None,
        state: JobState | None = None,
        limit: int = 50,
        cursor: str | None = None,
        since: float | None = None,
        until: float | None = None,
    ) -> Page:
        # Enqueue order; with a time range, creation time then enqueue order (the
        # order of the SQL brokers' index), the cursor "created_at:seq".
        ranged = since is not None or until is not None

        def position(rec: _Record) -> tuple[float, int]:
            return (rec.info.created_at if ranged else 0.0, rec.seq)

        with self._lock:
            records = sorted(self._jobs.values(), key=position, reverse=True)
        after = None if not cursor else created_cursor(cursor) if ranged else (0.0, int(cursor))
        items: list[JobInfo] = []
        last: _Record | None = None
        for rec in records:
            if after is not None and position(rec) >= after:
                continue
            if (queue and rec.info.queue != queue) or (state and rec.info.state != state):
                continue
            if not in_range(rec.info.created_at, since, until):
                continue
            if len(items) == limit:
                mark = position(last) if last is not None else (0.0, 0)
                return Page(items, f"{mark[0]!r}:{mark[1]}" if ranged else str(mark[1]))
            items.append(rec.info)
            last = rec
        return Page(items, None)

    async def workflow_jobs(self, workflow_id: str, *, limit: int = 1000) -> list[JobInfo]:
        with self._lock:
            records = sorted(self._jobs.values(), key=lambda r: r.seq)
        found = []
        for rec in records:
            envelope = rec.info.envelope()
            if envelope is not None and envelope.workflow_id == workflow_id:
                found.append(rec.info)
        return found[:limit]

    def _dead(self, queue: str | None, job_ids: Sequence[str] | None) -> list[_Record]:
        records = (
            [self._jobs[i] for i in job_ids if i in self._jobs]
            if job_ids is not None
            else list(self._jobs.values())
        )
        return [
            r
            for r in records
            if r.info.state is JobState.DEAD and (queue is None or r.info.queue == queue)
        ]

    async def replay_dead(
        self, queue: str | None = None, job_ids: Sequence[str] | None = None
    ) -> int:
        with self._lock:
            now = self.clock.now()
            dead = self._dead(queue, job_ids)
            for rec in dead:
                self._set(
                    rec,
                    state=JobState.QUEUED,
                    attempt=0,
                    due_at=now,
                    finished_at=None,
                    worker_id=None,
                )
                self._push_ready(rec)
                if rec.ledger:
                    rec.publish_by = now  # `due` publishes a new copy at once
        if dead:
            self._wakeup.notify()
        return len(dead)

    async def purge_dead(
        self,
        queue: str | None = None,
        job_ids: Sequence[str] | None = None,
        *,
        older_than: float | None = None,
    ) -> int:
        with self._lock:
            now = self.clock.now()
            dead = [
                r
                for r in self._dead(queue, job_ids)
                if older_than is None or (r.info.finished_at or now) < now - older_than
            ]
            for rec in dead:
                self._delete(rec)
        return len(dead)

    def _delete(self, rec: _Record) -> None:
        del self._jobs[rec.info.id]
        self._attempts.pop(rec.info.id, None)
        if rec.info.key is not None and self._keys.get(rec.info.key) == rec.info.id:
            del self._keys[rec.info.key]

    async def queues(self) -> list[str]:
        with self._lock:
            return sorted(self._queues)

    # -- coordination and housekeeping ------------------------------------------------

    async def take_rate(self, key: str, *, limit: int, per_s: float) -> float:
        with self._lock:
            now = self.clock.now()
            tat, wait = gcra(self._rates.get(key), now, limit, per_s)
            if tat is not None:
                self._rates[key] = tat
            return wait

    async def acquire_slot(self, key: str, *, limit: int, holder: str, ttl_s: float) -> bool:
        with self._lock:
            now = self.clock.now()
            holders = {h: until for h, until in self._slots.get(key, {}).items() if until > now}
            self._slots[key] = holders
            if holder not in holders and len(holders) >= limit:
                return False
            holders[holder] = now + ttl_s
            return True

    async def join(
        self, group_id: str, member_id: str, *, index: int, total: int, outcome: bytes
    ) -> list[bytes] | None:
        with self._lock:
            members = self._joins.setdefault(group_id, {})
            members.setdefault(member_id, (index, outcome))
            if len(members) < total:
                return None
            return [outcome for _, outcome in sorted(members.values())]

    async def release_slot(self, key: str, holder: str) -> None:
        with self._lock:
            holders = self._slots.get(key)
            if holders is not None:
                holders.pop(holder, None)
                if not holders:
                    del self._slots[key]

    async def compare_and_set(
        self, name: str, expected: str | None, new: str, *, ttl_s: float
    ) -> str | None:
        with self._lock:
            now = self.clock.now()
            value, until = self._registers.get(name, (None, now))
            current = value if until > now else None
            if current not in (expected, new):
                return current
            self._registers[name] = (new, now + ttl_s)
            return new

    async def register_worker(self, info: WorkerInfo, ttl_s: float) -> None:
        with self._lock:
            now = self.clock.now()
            self._workers[info.id] = (replace(info, last_seen=now), now + ttl_s)

    async def unregister_worker(self, worker_id: str) -> None:
        with self._lock:
            self._workers.pop(worker_id, None)

    async def workers(self) -> list[WorkerInfo]:
        with self._lock:
            now = self.clock.now()
            return sorted(
                (info for info, until in self._workers.values() if until > now),
                key=lambda w: w.id,
            )

    async def sweep(self) -> SweepReport:
        with self._lock:
            now = self.clock.now()
            expired = self._expire_due(now)
            finished = (JobState.SUCCEEDED, JobState.EXPIRED, JobState.CANCELLED)
            doomed = [
                r
                for r in self._jobs.values()
                if r.purge_at is not None and r.purge_at <= now and r.info.state in finished
            ]
            for rec in doomed:
                self._delete(rec)
            purged = len(doomed)
            lapsed = [w for w, (_, until) in self._workers.items() if until <= now]
            for worker_id in lapsed:
                del self._workers[worker_id]
            self._rates = {k: tat for k, tat in self._rates.items() if tat > now}
            self._registers = {k: v for k, v in self._registers.items() if v[1] > now}
            kept = minute_of(now - FINISHED_KEEP_S)
            self._finished = {k: n for k, n in self._finished.items() if k[1] >= kept}
        return SweepReport(expired=expired, purged=purged, workers_removed=len(lapsed))

    # -- operations: pause flags and attempt history ------------------------------------

    async def set_paused(self, name: str, paused: bool) -> bool:
        with self._lock:
            if paused == (name in self._paused):
                return False
            if paused:
                self._paused[name] = self.clock.now()
            else:
                del self._paused[name]
            return True

    async def paused(self) -> dict[str, float]:
        with self._lock:
            return dict(self._paused)

    async def record_attempt(self, job_id: str, token: str, record: bytes, *, keep: int) -> None:
        with self._lock:
            records, dropped = self._attempts.get(job_id, ([], 0))
            if records and records[-1][0] == token:
                return
            records = [*records, (token, record)]
            cut = max(len(records) - keep, 0)
            self._attempts[job_id] = (records[cut:], dropped + cut)

    async def attempt_records(self, job_id: str) -> tuple[list[bytes], int]:
        with self._lock:
            records, dropped = self._attempts.get(job_id, ([], 0))
            return [record for _, record in records], dropped
