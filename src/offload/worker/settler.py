"""Group commit of acks: one broker round trip for every job that finished meanwhile;
and, when the broker refuses a lease, whether the job may really run twice.

A job's ack is not delayed to fill a batch. The first ack starts a flush at once; acks
that arrive while that flush is in flight wait for the next one, so batches grow
exactly when the broker is the bottleneck and stay at one job when the worker is idle.
The job's task awaits its own ack, so its lease is kept alive (and shutdown waits for
it) until the ack is durable.
"""

from __future__ import annotations

import asyncio

from offload.brokers.base import LEASE_EXPIRED, Ack, Broker, Lease

__all__ = ["AckBatcher", "lease_fate"]

#: Most acks written in one broker call.
MAX_BATCH = 500


class AckBatcher:
    def __init__(self, broker: Broker) -> None:
        self._broker = broker
        self._pending: list[tuple[Ack, asyncio.Future[bool]]] = []
        self._flusher: asyncio.Task[None] | None = None

    async def ack(self, item: Ack) -> bool:
        """Record a success; False if the lease was no longer held.

        Raises:
            BrokerError: the broker failed; the job stays leased and runs again after
                its lease lapses.
        """
        future: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        self._pending.append((item, future))
        if self._flusher is None:
            self._flusher = asyncio.create_task(self._flush(), name="ack flush")
        return await asyncio.shield(future)

    async def _flush(self) -> None:
        try:
            while self._pending:
                batch = self._pending[:MAX_BATCH]
                del self._pending[:MAX_BATCH]
                try:
                    held = await self._broker.ack_many([item for item, _ in batch])
                except Exception as exc:
                    for _, future in batch:
                        future.set_exception(exc)
                else:
                    for (_, future), ok in zip(batch, held, strict=True):
                        future.set_result(ok)
        finally:
            self._flusher = None


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
