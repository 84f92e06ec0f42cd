"""Signals on PostgreSQL: cancel requests, and job ends for `wait_finished` (the
`Signals` role).

A waiting job is cancelled by one statement; a running one is flagged, and its worker
polls the flags of its running jobs (`cancel_requested`). Every statement that ends a
job also NOTIFYs its id on the schema's ends channel (`offload_notify_ends`, one
notification per statement), which the process's listener turns into
`EndWaiters.notify` calls, so `wait_finished` returns within a round trip of the end,
whichever process ended the job.
"""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Awaitable, Callable, Iterable, Sequence

from offload.brokers._wakeup import JobWaiters
from offload.brokers.base import Lease
from offload.brokers.postgres._executor import Database
from offload.brokers.records import minute_of
from offload.clock import Clock
from offload.envelope import TERMINAL_STATES, JobState

__all__ = ["EndWaiters", "Signals"]


class EndWaiters:
    """`JobWaiters` plus the ids being waited for, so that all of them can be woken
    when the listener lost its connection (an end may have gone unheard)."""

    def __init__(self) -> None:
        self._waiters = JobWaiters()
        self._lock = threading.Lock()
        self._ids: Counter[str] = Counter()

    def __bool__(self) -> bool:
        return bool(self._waiters)

    async def wait(
        self, job_id: str, ended: Callable[[], Awaitable[bool]], timeout_s: float
    ) -> None:
        with self._lock:
            self._ids[job_id] += 1
        try:
            await self._waiters.wait(job_id, ended, timeout_s)
        finally:
            with self._lock:
                self._ids[job_id] -= 1
                if not self._ids[job_id]:
                    del self._ids[job_id]

    def notify(self, job_ids: Iterable[str]) -> None:
        """Wake the waiters of these jobs (nothing to do, and nothing done, if no one
        in this process waits: the common case on the ack path)."""
        if self._waiters:
            for job_id in job_ids:
                self._waiters.notify(job_id)

    def on_payload(self, payload: str | None) -> None:
        """A notification of the ends channel (ids, one per line); None: the listener
        reconnected, so wake every waiter to look again."""
        if payload is None:
            with self._lock:
                waited = list(self._ids)
            self.notify(waited)
        elif self._waiters:
            self.notify(payload.split("\n"))


class Signals:
    """The `Signals` role on a `Database`; `listen_ends` makes sure this event loop's
    listener LISTENs to the ends channel (it does so only once someone waits)."""

    def __init__(
        self,
        db: Database,
        clock: Clock,
        *,
        retention_s: float,
        ends_channel: str,
        waiters: EndWaiters,
        listen_ends: Callable[[], Awaitable[None]],
    ) -> None:
        self._db = db
        self._clock = clock
        self._retention_s = retention_s
        self._ends_channel = ends_channel
        self._waiters = waiters
        self._listen_ends = listen_ends

    async def cancel(self, job_id: str) -> bool:
        now = self._clock.now()
        params = {"id": job_id, "now": now, "purge_at": now + self._retention_s}
        params |= {"minute": minute_of(now), "ends": self._ends_channel}
        rows = await self._db.rows("cancel", params)
        self._waiters.notify([job_id])  # spurious if it was running (only flagged): allowed
        return bool(rows)

    async def cancel_requested(self, leases: Sequence[Lease]) -> set[str]:
        if not leases:
            return set()
        rows = await self._db.rows("cancel_requested", {"ids": [lease.job_id for lease in leases]})
        return {row["id"] for row in rows}

    async def wait_finished(self, job_id: str, timeout_s: float) -> None:
        """Register (`EndWaiters.wait`), make sure the ends channel is LISTENed to, then
        read the job: an end that commits after the LISTEN is pushed, one before it is
        seen by the read."""

        async def ended() -> bool:
            await self._listen_ends()
            rows = await self._db.rows("job_state", {"id": job_id})
            return not rows or JobState(rows[0]["state"]) in TERMINAL_STATES

        await self._waiters.wait(job_id, ended, timeout_s)
