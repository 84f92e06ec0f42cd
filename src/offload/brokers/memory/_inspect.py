"""The memory broker's `Inspection` role: counts, listings, lookups, the dead-letter
queue, progress and attempt history, read from the job table.

Apart from the delivery and the other roles (`offload.brokers.memory`) because it only
reads the table (but for replaying and purging dead jobs): what people and tools see.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

from offload.brokers.base import Finished, JobInfo, Page, QueueStats
from offload.brokers.memory._table import JobTable, Record
from offload.brokers.records import created_cursor, in_range, minute_of
from offload.brokers.roles import Inspection
from offload.codec import decode_value
from offload.envelope import JobState

__all__ = ["MemoryInspection"]


class MemoryInspection(JobTable, Inspection):
    """`Inspection` over a `JobTable`, each method one lock-held read (or move)."""

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

        def position(rec: Record) -> tuple[float, int]:
            return (rec.info.created_at if ranged else 0.0, rec.seq)

        with self._lock:
            records = sorted(self._jobs.values(), key=position, reverse=True)
        after = None if not cursor else created_cursor(cursor) if ranged else (0.0, int(cursor))
        items: list[JobInfo] = []
        last: Record | None = None
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

    def _dead(self, queue: str | None, job_ids: Sequence[str] | None) -> list[Record]:
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
                    cancel_requested=False,  # nobody cancelled the replay
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

    async def queues(self) -> list[str]:
        with self._lock:
            return sorted(self._queues)

    # -- attempt history ----------------------------------------------------------------

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
