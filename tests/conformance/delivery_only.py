"""`DeliveryOnly`: a broker that can only deliver, for the suite's delivery part and for
`Composite`.

It plays the `Delivery` role of a full broker and no other, as a message queue
(RabbitMQ, SQS) does: `with_state_store(DeliveryOnly(a), b)`, with `b` another broker,
is then a whole broker again, built from parts, and must pass the whole suite. For
that it also publishes copies for the state store (`publish`): each copy is a job of
`a` whose id is the job's id and the copy's stamp (`<id>~<stamp>`), so that a copy
published again is a new message, as on a message queue.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

from offload.brokers.base import Broker, EnqueueResult, Lease, Settlement
from offload.brokers.records import Outgoing
from offload.brokers.roles import Delivery
from offload.envelope import Envelope

#: Between a job's id and its copy's stamp in the id of the inner broker's job.
SEP = "~"


def _outer(lease: Lease) -> Lease:
    """A lease of the inner broker as this delivery's: a copy's id split in two."""
    job_id, sep, stamp = lease.job_id.partition(SEP)
    return replace(lease, job_id=job_id, stamp=stamp) if sep else lease


def _inner(lease: Lease) -> Lease:
    if lease.stamp is None:
        return lease
    return replace(lease, job_id=f"{lease.job_id}{SEP}{lease.stamp}", stamp=None)


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

    async def publish(self, jobs: Sequence[Outgoing]) -> None:
        copies = [
            (
                Envelope(
                    id=f"{job.job_id}{SEP}{job.stamp}",
                    task="copy",
                    queue=job.queue,
                    priority=job.priority,
                ),
                job.payload,
            )
            for job in jobs
        ]
        await self.inner.enqueue(copies)

    async def reserve(
        self, queues: Sequence[str], *, worker_id: str, lease_s: float, limit: int
    ) -> list[Lease]:
        leases = await self.inner.reserve(queues, worker_id=worker_id, lease_s=lease_s, limit=limit)
        return [_outer(lease) for lease in leases]

    async def wait(self, queues: Sequence[str], timeout_s: float) -> None:
        await self.inner.wait(queues, timeout_s)

    async def next_due(self, queues: Sequence[str]) -> float | None:
        return await self.inner.next_due(queues)

    async def extend(self, leases: Sequence[Lease], lease_s: float) -> list[bool]:
        return await self.inner.extend([_inner(lease) for lease in leases], lease_s)

    async def release(self, leases: Sequence[Lease]) -> None:
        await self.inner.release([_inner(lease) for lease in leases])

    async def settle_many(self, settlements: Sequence[Settlement]) -> list[bool]:
        return await self.inner.settle_many(
            [replace(item, lease=_inner(item.lease)) for item in settlements]
        )
