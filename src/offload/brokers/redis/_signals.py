"""Signals on Redis: cancel requests, and job ends for `wait_finished` (the `Signals`
role).

A waiting job is cancelled by `cancel.lua`; a running one is flagged in its record, and
its worker polls the flags of its running jobs (`cancel_requested`: one HMGET of the job
records per queue, in one pipeline).

`wait_finished` is a push from whichever process ends the job.

Publishing every end would cost every ack a PUBLISH (and, on a cluster, a broadcast to
every node), for the rare job someone waits on. So a waiter registers instead: the
`watch.lua` script adds the job id to its queue's `P:{q}:waiters` hash and returns the
job's state in one atomic step, and the scripts that end jobs (ack, bury,
cancel_running, cancel, and expiry in reserve and sweep) publish, once per call, the
ids they ended that are in that hash, on the channel `P:ended`. A queue nobody waits on
pays one EXISTS per script call.

Order: the waiter is registered in this process's `JobWaiters` and its subscription to
`P:ended` is confirmed by Redis before `watch.lua` looks at the job, so an end is either
seen by that look or published to an already subscribed listener. Ends in this process
also notify the `JobWaiters` directly.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterable, Sequence
from typing import Any

import msgspec

from offload.brokers._wakeup import JobWaiters
from offload.brokers.base import Lease
from offload.brokers.redis._executor import Executor
from offload.brokers.redis._records import num, text
from offload.clock import Clock
from offload.envelope import TERMINAL_STATES, JobState

__all__ = ["Signals"]

#: Subscribes to channels on this loop's listener, with a handler for their messages
#: and, if `confirm`, waiting for Redis to confirm (`RedisBroker._subscribed`).
Subscribe = Callable[..., Awaitable[Any]]


class Signals:
    """The `Signals` role on an `Executor`; `subscribe` reaches the pub/sub listener."""

    def __init__(self, x: Executor, clock: Clock, retention_s: float, subscribe: Subscribe) -> None:
        self._x = x
        self._clock = clock
        self._retention_s = retention_s
        self._subscribe = subscribe
        self.waiters = JobWaiters()  # `wait_finished` in this process

    async def cancel(self, job_id: str) -> bool:
        queue = await self.locate(job_id)
        if queue is None:
            return False
        now = self._clock.now()
        args = [num(now), job_id, num(now + self._retention_s), self._x.ended_channel]
        if not await self._x.run("cancel", self._x.q(queue), args):
            return False
        self.ended_here([job_id])  # spurious for a running job (only flagged): allowed
        return True

    async def cancel_requested(self, leases: Sequence[Lease]) -> set[str]:
        if not leases:
            return set()
        by_queue: dict[str, list[str]] = {}
        for lease in leases:
            by_queue.setdefault(lease.queue, []).append(lease.job_id)
        commands = [("HMGET", self._x.q(q).record, *ids) for q, ids in by_queue.items()]
        replies = await self._x.commands(commands)
        flagged: set[str] = set()
        for ids, records in zip(by_queue.values(), replies, strict=True):
            for job_id, raw in zip(ids, records, strict=True):
                record = msgspec.msgpack.decode(raw) if raw else {}
                if record.get("s") in ("running", b"running") and record.get("cx"):
                    flagged.add(job_id)
        return flagged

    async def wait_finished(self, job_id: str, timeout_s: float) -> None:
        queue = await self.locate(job_id)
        if queue is None:
            return
        try:
            await self._subscribe([self._x.ended_channel], handler=self._on_ended, confirm=True)
        except Exception:  # no push now (BrokerError, or redis-py failing mid-reconnect)
            await asyncio.sleep(min(timeout_s, 1.0))  # the caller reads the job again
            return

        async def ended() -> bool:
            state = await self._x.run("watch", self._x.q(queue), [job_id])
            return state is None or JobState(text(state)) in TERMINAL_STATES

        await self.waiters.wait(job_id, ended, timeout_s)

    def _on_ended(self, data: bytes) -> None:
        for job_id in data.decode().split():
            self.waiters.notify(job_id)

    def ended_here(self, job_ids: Iterable[str]) -> None:
        """Wake this process's `wait_finished` callers at once, without the pub/sub trip."""
        if self.waiters:
            for job_id in job_ids:
                self.waiters.notify(job_id)

    async def locate(self, job_id: str) -> str | None:
        """The queue holding a job, None if no queue does: by its payload, which a job
        has from its enqueue to its deletion (its record may still wait in the inbox)."""
        names = await self._x.known_queues()
        found = await self._x.commands([("HEXISTS", self._x.q(q).payload, job_id) for q in names])
        return next((q for q, hit in zip(names, found, strict=True) if hit), None)
