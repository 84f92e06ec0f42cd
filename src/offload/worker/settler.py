"""Group commit of every outcome: one broker round trip for every job that settled
meanwhile; and, when the broker refuses a lease, whether the job may really run twice.

Acks, retries, burials, deferrals and cancellations all go through one
`Settlements` batcher to `Broker.settle_many`. A job's settlement is not delayed to
fill a batch. The first starts a flush at once; settlements that arrive while that
flush is in flight wait for the next one, so batches grow exactly when the broker is
the bottleneck and stay at one job when the worker is idle. The job's task awaits its
own settlement, so its lease is kept alive (and shutdown waits for it) until the
settlement is durable; a job run whole in a handler thread (`lane.py`) has no task of
its own: its settlement carries a callback instead (`add`).
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Callable

from offload.brokers.base import LEASE_EXPIRED, Broker, Lease, Settlement
from offload.errors import LeaseLost

__all__ = ["Settlements", "lease_fate"]

#: Most settlements written in one broker call.
MAX_BATCH = 500

#: Where the fate of a settlement goes: whether the lease was still held, or what the
#: broker raised.
Settled = Callable[["bool | Exception"], None]


class Settlements:
    """The worker's group commit of settlements (see the module docstring)."""

    def __init__(self, broker: Broker) -> None:
        self._broker = broker
        self._pending: list[tuple[Settlement, Settled]] = []
        self._flusher: asyncio.Task[None] | None = None

    async def settle(self, item: Settlement) -> None:
        """Record one settlement, in the next batch.

        Raises:
            LeaseLost: the lease was no longer held.
            BrokerError: the broker failed; the job stays leased and runs again after
                its lease lapses.
        """
        future: asyncio.Future[bool | Exception] = asyncio.get_running_loop().create_future()
        self.add(item, functools.partial(_answer, future))
        held = await future  # cancelling the waiter leaves the settlement in its batch
        if isinstance(held, Exception):
            raise held
        if not held:
            raise LeaseLost(f"lease on job {item.lease.job_id} is no longer held")

    def add(self, item: Settlement, settled: Settled) -> None:
        """Record one settlement in the next batch; then `settled(held)`, on the loop,
        with whether the lease was still held or the exception the broker raised."""
        self._pending.append((item, settled))
        if self._flusher is None:
            self._flusher = asyncio.create_task(self._flush(), name="settlement flush")

    async def _flush(self) -> None:
        try:
            while self._pending:
                batch = self._pending[:MAX_BATCH]
                del self._pending[:MAX_BATCH]
                try:
                    held: list[bool | Exception] = list(
                        await self._broker.settle_many([item for item, _ in batch])
                    )
                except Exception as exc:
                    held = [exc] * len(batch)
                for (_, settled), ok in zip(batch, held, strict=True):
                    settled(ok)
        finally:
            self._flusher = None


def _answer(future: asyncio.Future[bool | Exception], held: bool | Exception) -> None:
    if not future.done():  # else its waiter was cancelled: nobody listens
        future.set_result(held)


async def lease_fate(broker: Broker, lease: Lease) -> str | None:
    """What became of a job whose lease the broker refused (`extend` said False, or
    settling it raised `LeaseLost`): how another run of it may happen or has happened,
    or None if none will. None when the job ended under this very lease (its own
    settlement landed first, or a retried one whose first try landed) or is gone.

    Raises:
        BrokerError: the broker failed.
    """
    info = await broker.get_job(lease.job_id)
    if info is None:
        return None
    if info.attempt != lease.attempt:
        on = f" on worker {info.worker_id}" if info.worker_id else ""
        return f"attempt {info.attempt} of it is {info.state}{on}"
    if info.error is not None and info.error.type == LEASE_EXPIRED.type:
        return f"its lease expired and the broker took it back: it is {info.state}"
    return None
