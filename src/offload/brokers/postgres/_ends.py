"""Job ends on PostgreSQL: the outbox of ends without a worker, and `wait_finished`.

The outbox is not a table: a flow job (one with `then` or `chord`) that is cancelled
while waiting or expires gets its `outbox_seq` set by the very statement that changes
its state, and `clear_outbox` sets it back to NULL. The entry is thus atomic with the
state change, costs no extra write, and vanishes when the job is purged.

Every statement that ends a job also NOTIFYs its id on the schema's ends channel
(`offload_notify_ends`, one notification per statement), which the process's listener
turns into `JobWaiters.notify` calls, so `wait_finished` returns within a round trip of
the end, whichever process ended the job.
"""

from __future__ import annotations

import hashlib
import threading
from collections import Counter
from collections.abc import Awaitable, Callable, Iterable, Sequence
from typing import TYPE_CHECKING

from offload.brokers._wakeup import JobWaiters
from offload.brokers.base import Ended
from offload.envelope import TERMINAL_STATES, JobState

if TYPE_CHECKING:
    from offload.brokers.postgres import PostgresBroker

__all__ = [
    "EndWaiters",
    "channel_name",
    "clear_outbox",
    "ends_channel",
    "outbox",
    "wait_finished",
]

#: The longest channel name PostgreSQL keeps (NAMEDATALEN - 1), in bytes.
_MAX_CHANNEL = 63


def channel_name(base: str, schema: str | None) -> str:
    """The NOTIFY channel `base` of `schema`'s jobs (`offload.<schema>` for wake-ups,
    `offload_ended.<schema>` for ends). A name too long for PostgreSQL, which would
    make `pg_notify` fail (a schema name may itself be 63 bytes), ends in a digest of
    the schema instead."""
    if schema is None:
        return base
    name = f"{base}.{schema}"
    if len(name.encode()) > _MAX_CHANNEL:
        name = f"{base}.{hashlib.sha1(schema.encode()).hexdigest()}"
    return name


def ends_channel(schema: str | None) -> str:
    """The NOTIFY channel of job ends in `schema`."""
    return channel_name("offload_ended", schema)


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


async def outbox(broker: PostgresBroker, limit: int) -> list[Ended]:
    rows = await broker._rows("outbox", {"limit": max(limit, 0)})
    return [Ended(r["id"], JobState(r["state"]), bytes(r["payload"])) for r in rows]


async def clear_outbox(broker: PostgresBroker, job_ids: Sequence[str]) -> None:
    if job_ids:
        await broker._rowcount("clear_outbox", {"ids": list(job_ids)})


async def wait_finished(broker: PostgresBroker, job_id: str, timeout_s: float) -> None:
    """Register (`EndWaiters.wait`), make sure the ends channel is LISTENed to, then
    read the job: an end that commits after the LISTEN is pushed, one before it is
    seen by the read."""
    state = await broker._state()

    async def ended() -> bool:
        await state.listener.listen_ends()
        rows = await broker._rows("job_state", {"id": job_id})
        return not rows or JobState(rows[0]["state"]) in TERMINAL_STATES

    await broker._ends.wait(job_id, ended, timeout_s)
