"""`memory://`: the whole broker contract in process memory, for tests and examples.

A real implementation, not a mock: it passes the same conformance suite as every other
broker. Each operation runs under one lock, which is what makes it atomic; it is shared
by every event loop and thread of the process, but not across processes.

The broker is cut in three: the job table (`_table.py`: records, indexes and the
lock-held operations on them), inspection (`_inspect.py`: what people and tools read)
and, here, `MemoryBroker` with the other roles, each method one lock-held call.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import replace

from offload.brokers.base import (
    LEASE_EXPIRED,
    Broker,
    Capabilities,
    Ended,
    Ending,
    EnqueueResult,
    Lease,
    Settlement,
    SweepReport,
    WorkerInfo,
)
from offload.brokers.ledger import PUBLISH_GRACE_S, Ledger
from offload.brokers.memory._inspect import MemoryInspection
from offload.brokers.memory._table import Record
from offload.brokers.records import FINISHED_KEEP_S, Outgoing, minute_of
from offload.envelope import TERMINAL_STATES, Envelope, JobState
from offload.errors import LeaseLost
from offload.limits import gcra

__all__ = ["MemoryBroker"]

#: Endings that put the job back in the schedule (a worker may wait for it).
_RESCHEDULING = (Ending.RETRY, Ending.DEFER)


class MemoryBroker(MemoryInspection, Broker, Ledger):
    """Jobs in dicts and heaps; state is lost with the process. Also the state store
    of a delivery-only broker (`Ledger`): its jobs are kept here but not in the heaps,
    and `due` finds them by a scan (this broker is for tests)."""

    capabilities = Capabilities(push_wakeup=True, cross_process=False, push_results=True)

    def __init__(self, url: str = "memory://", **kwargs: object) -> None:
        super().__init__(url, **kwargs)

    # -- producer ---------------------------------------------------------------------

    async def enqueue(
        self, jobs: Sequence[tuple[Envelope, bytes]], *, max_depth: int | None = None
    ) -> list[EnqueueResult]:
        with self._lock:
            results, _ = self._insert(jobs, max_depth, ledger=False)
        self._wakeup.notify()
        return results

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

    def _settle(self, rec: Record, item: Settlement, now: float) -> None:
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

    def _copy(self, rec: Record, now: float) -> Outgoing:
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
    def _needs_copy(rec: Record, queues: set[str], now: float) -> bool:
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

    # -- operations: pause flags -------------------------------------------------------

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
