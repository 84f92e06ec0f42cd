"""`DeliveryOnly`: a broker that can only deliver, for the suite's delivery part and for
`Composite`.

It plays the `Delivery` role of a full broker and no other, as a message queue
(RabbitMQ, SQS) does: `with_state_store(DeliveryOnly(b), b)` is then a whole broker
again, built from parts, and must pass the whole suite.
"""

from __future__ import annotations

from collections.abc import Sequence

from offload.brokers.base import Broker, EnqueueResult, Lease, Settlement
from offload.brokers.roles import Delivery
from offload.envelope import Envelope

__all__ = ["DeliveryOnly"]


class DeliveryOnly(Delivery):
    """The `Delivery` calls of `inner`, and nothing else of it."""

    def __init__(self, inner: Broker) -> None:
        super().__init__(inner.url, clock=inner.clock, retention_s=inner.retention_s)
        self.inner = inner
        self.capabilities = inner.capabilities

    async def connect(self) -> None:
        await self.inner.connect()

    async def close(self) -> None:
        await self.inner.close()

    async def enqueue(
        self, jobs: Sequence[tuple[Envelope, bytes]], *, max_depth: int | None = None
    ) -> list[EnqueueResult]:
        return await self.inner.enqueue(jobs, max_depth=max_depth)

    def enqueue_blocking(
        self, jobs: Sequence[tuple[Envelope, bytes]], *, max_depth: int | None = None
    ) -> list[EnqueueResult] | None:
        return self.inner.enqueue_blocking(jobs, max_depth=max_depth)

    async def reserve(
        self, queues: Sequence[str], *, worker_id: str, lease_s: float, limit: int
    ) -> list[Lease]:
        return await self.inner.reserve(queues, worker_id=worker_id, lease_s=lease_s, limit=limit)

    async def wait(self, queues: Sequence[str], timeout_s: float) -> None:
        await self.inner.wait(queues, timeout_s)

    async def next_due(self, queues: Sequence[str]) -> float | None:
        return await self.inner.next_due(queues)

    async def extend(self, leases: Sequence[Lease], lease_s: float) -> list[bool]:
        return await self.inner.extend(leases, lease_s)

    async def release(self, leases: Sequence[Lease]) -> None:
        await self.inner.release(leases)

    async def settle_many(self, settlements: Sequence[Settlement]) -> list[bool]:
        return await self.inner.settle_many(settlements)
