"""The producer side of the RabbitMQ delivery: what a job's message carries and where
it goes (`offload.brokers.amqp.delivery` enqueues, publishes a state store's copies and
republishes held jobs through `Publishing`).

Two paths send a new job, and the consumer must not tell them apart: the asyncio one
(`Publishing.enqueue`, on the broker's `Link`) and the calling thread's
(`offload.brokers.amqp._blocking`, for a plain sync `enqueue`). Both take the message's
headers from `new_headers` here, and their properties from `topology` (`PERSISTENT`,
`CONTENT_TYPE`).
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

from pamqp import commands as spec
from pamqp.common import FieldTable

from offload.brokers.amqp import topology
from offload.brokers.amqp._blocking import BlockingPublisher
from offload.brokers.amqp._connection import Link
from offload.brokers.amqp.settings import AmqpSettings
from offload.brokers.amqp.topology import CONTENT_TYPE, DUE_HEADER, EXPIRES_HEADER, PERSISTENT
from offload.brokers.records import EnqueueResult, Outgoing
from offload.envelope import Envelope
from offload.errors import BrokerUnavailable

__all__ = ["Publishing", "new_headers"]


def new_headers(envelope: Envelope, now_ms: int) -> FieldTable | None:
    """The headers of a new job's message: its due time if it is in the future, its
    expiry if it has one, else none at all. No attempt header for a new job (absent
    reads as 0): a message without a header table is one decode fewer for every
    consumer, and less for RabbitMQ."""
    headers: FieldTable = {}
    due_ms = None if envelope.not_before is None else round(envelope.not_before * 1000)
    if due_ms is not None and due_ms > now_ms:
        headers[DUE_HEADER] = due_ms
    if envelope.expires_at is not None:
        headers[EXPIRES_HEADER] = round(envelope.expires_at * 1000)
    return headers or None


class Publishing:
    """Publishes jobs on a `Link`'s confirming channel, declaring what they need.

    Attributes:
        used: the offload queues this process enqueued to or consumed (RabbitMQ cannot
            list them: `AmqpFacts.names`).
        declared: the offload queues whose work queue this process has declared; the
            calling thread's path publishes only to these (it declares nothing).
        blocking: the calling threads' publisher (`publish_blocking`).
    """

    def __init__(self, link: Link, settings: AmqpSettings, names: topology.Names) -> None:
        self.link = link
        self.settings = settings
        self.names = names
        self.used: set[str] = set()
        self.declared: set[str] = set()
        self.blocking = BlockingPublisher(settings)

    async def enqueue(
        self, jobs: Sequence[tuple[Envelope, bytes]], now_ms: int
    ) -> list[EnqueueResult]:
        """Publish every job, pipelined on one channel, and return once RabbitMQ has
        confirmed all of them (`AmqpDelivery.enqueue` says what is checked first)."""
        for queue in {envelope.queue for envelope, _ in jobs}:
            await self.declare_work(queue)
        await asyncio.gather(
            *(
                self.publish_one(
                    payload,
                    queue=envelope.queue,
                    job_id=envelope.id,
                    priority=topology.amqp_priority(envelope.priority),
                    headers=new_headers(envelope, now_ms),
                    now_ms=now_ms,
                )
                for envelope, payload in jobs
            )
        )
        return [EnqueueResult(envelope.id, True) for envelope, _ in jobs]

    def publish_blocking(self, envelope: Envelope, payload: bytes, now_ms: int) -> bool:
        """Publish one job from the calling thread (`_blocking.py`) if it is due now and
        its queue is declared already, and return once RabbitMQ confirmed it; False,
        publishing nothing, for any other job (the caller uses `enqueue`).

        Raises:
            BrokerUnavailable: RabbitMQ is unreachable or refused the message; the
                queue's declaration is forgotten (it may have been deleted), so the next
                enqueue declares it again.
        """
        headers = new_headers(envelope, now_ms)
        if envelope.queue not in self.declared or (headers and DUE_HEADER in headers):
            return False
        routing_key = self.names.work(envelope.queue)
        try:
            self.blocking.publish(
                payload,
                routing_key=routing_key,
                job_id=envelope.id,
                priority=topology.amqp_priority(envelope.priority),
                headers=headers,
            )
        except BrokerUnavailable:
            self.declared.discard(envelope.queue)
            if (session := self.link.current) is not None:
                session.declared.discard(routing_key)
            raise
        return True

    def close(self) -> None:
        """Close the calling threads' connections (the `Link` is closed by its owner)."""
        self.blocking.close()

    async def copies(self, jobs: Sequence[Outgoing], now_ms: int) -> None:
        """Publish a body-less copy of each job for the state store, due now, with its
        stamp (`AmqpDelivery.publish`); pipelined, as `enqueue`."""
        for queue in {job.queue for job in jobs}:
            await self.declare_work(queue)
        await asyncio.gather(
            *(
                self.publish_one(
                    b"",
                    queue=job.queue,
                    job_id=job.job_id,
                    priority=topology.amqp_priority(job.priority),
                    headers=None,
                    now_ms=now_ms,
                    stamp=job.stamp,
                )
                for job in jobs
            )
        )

    async def declare_work(self, queue: str) -> None:
        """The work queue, bound by its name to the work exchange (where the delay
        buckets dead-letter)."""
        self.used.add(queue)
        await self.link.declare_queue(
            self.names.work(queue),
            topology.work_arguments(self.settings.queue_type),
            exchange=self.names.work_exchange,
        )
        self.declared.add(queue)

    async def publish_one(
        self,
        payload: bytes,
        *,
        queue: str,
        job_id: str,
        priority: int,
        headers: FieldTable | None,
        now_ms: int,
        stamp: str | None = None,
    ) -> None:
        """Publish to the work queue, or to the delay bucket its due time asks for. A
        state store's copy (`stamp`) carries no headers: its stamp is the
        `correlation_id`, and the store keeps the rest (fewer bytes for every consumer
        to decode)."""
        due = None if headers is None else headers.get(DUE_HEADER)
        bucket = topology.bucket_for(due - now_ms) if isinstance(due, int) else None
        exchange = ""
        if bucket is not None:
            name = self.names.bucket(bucket)
            await self.link.declare_queue(
                name,
                topology.bucket_arguments(bucket, self.names.work_exchange),
                exchange=self.names.delay_exchange,
                exchange_type="headers",
                binding={topology.DELAY_HEADER: bucket},
            )
            headers = {**(headers or {}), topology.DELAY_HEADER: bucket}
            exchange = self.names.delay_exchange
        properties = spec.Basic.Properties(
            delivery_mode=PERSISTENT,
            priority=priority,
            message_id=job_id,
            content_type=CONTENT_TYPE,
            headers=headers,
            correlation_id=stamp,
        )
        await self.link.publish(
            payload, exchange=exchange, routing_key=self.names.work(queue), properties=properties
        )
