"""Group commit of acks: one broker round trip for every job that finished meanwhile.

A job's ack is not delayed to fill a batch. The first ack starts a flush at once; acks
that arrive while that flush is in flight wait for the next one, so batches grow
exactly when the broker is the bottleneck and stay at one job when the worker is idle.
The job's task awaits its own ack, so its lease is kept alive (and shutdown waits for
it) until the ack is durable.
"""

from __future__ import annotations

import asyncio

from offload.brokers.base import Ack, Broker

__all__ = ["AckBatcher"]

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
