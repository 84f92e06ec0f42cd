"""What RabbitMQ itself knows of an offload queue, for an `amqp://` broker without a
state store (`offload.brokers.stateless`).

AMQP 0-9-1 tells a queue's ready messages (`queue.declare-ok`), not its unacknowledged
ones, and cannot list queues: so `stats` counts `queued` (ready in the work queue) and
`dead` (the dead-letter queue) only, and `names` are the queues this process has
enqueued to or consumed (name them to count others: `counts(["emails"])`,
`offload inspect --queue emails`). Jobs waiting in a delay bucket (delayed jobs and
retries) are in buckets shared by every queue of the prefix, so they are not counted
per queue. Every call runs on a channel of its own (`Link.channel`): a passive
declare of a queue that does not exist closes its channel, and dead letters taken but
not chosen are put back at its tail.
"""

from __future__ import annotations

from collections.abc import Sequence

import aiormq.abc
import aiormq.exceptions
from pamqp import commands as spec

from offload.brokers.amqp import topology
from offload.brokers.amqp._connection import Link
from offload.brokers.amqp.settings import STATE_SETTING
from offload.brokers.amqp.topology import ATTEMPT_HEADER, DUE_HEADER, ERROR_HEADER, Names
from offload.brokers.facts import QueueFacts
from offload.brokers.records import QueueStats
from offload.envelope import JobState

__all__ = ["AmqpFacts"]


class AmqpFacts(QueueFacts):
    setting = STATE_SETTING
    scheme = "amqp"
    lists_queues = False  # RabbitMQ's AMQP has no way to list queues

    def __init__(self, link: Link, names: Names, queue_type: str, used: set[str]) -> None:
        self._link = link
        self._names = names
        self._queue_type = queue_type
        self._used = used  # the delivery's: the queues this process used

    async def stats(self, queue: str) -> QueueStats:
        return QueueStats(
            {
                JobState.QUEUED: await self._ready(self._names.work(queue)),
                JobState.DEAD: await self._ready(self._names.dead(queue)),
            }
        )

    async def names(self) -> list[str]:
        return sorted(self._used)

    async def replay_dead(self, queue: str, job_ids: Sequence[str] | None) -> int:
        """Publish each chosen dead letter to the work queue (`_fresh`), then ack it."""
        await self._link.declare_queue(
            self._names.work(queue),
            topology.work_arguments(self._queue_type),
            exchange=self._names.work_exchange,
        )
        self._used.add(queue)
        return await self._sweep(queue, job_ids, replay=True)

    async def purge_dead(self, queue: str, job_ids: Sequence[str] | None) -> int:
        if job_ids is None:
            async with self._link.channel() as channel:
                if await self._passive(channel, self._names.dead(queue)) is None:
                    return 0
                purged = await channel.queue_purge(self._names.dead(queue))
                assert purged is not None  # not nowait
                return purged.message_count or 0
        return await self._sweep(queue, job_ids, replay=False)

    async def _sweep(self, queue: str, job_ids: Sequence[str] | None, *, replay: bool) -> int:
        """Take every dead letter of `queue` once (as many as it held at the start) and
        replay or drop the chosen ones. The others are published to the dead-letter
        queue again (confirmed) and acked, not left to the channel's close: RabbitMQ
        requeues on close in its own time, so a sweep right after this one would not
        see them. Each move is publish-then-ack: a crash leaves a job twice, never
        nowhere."""
        dead = self._names.dead(queue)
        wanted = None if job_ids is None else set(job_ids)
        done = 0
        async with self._link.channel() as channel:
            held = await self._passive(channel, dead)
            for _ in range(held or 0):
                message = await channel.basic_get(dead, no_ack=False)
                if not isinstance(message.delivery, spec.Basic.GetOk):
                    break  # empty: taken by another sweep meanwhile
                properties = message.header.properties
                chosen = wanted is None or properties.message_id in wanted
                if not chosen:
                    await self._link.publish(message.body, routing_key=dead, properties=properties)
                elif replay:
                    await self._link.publish(
                        message.body,
                        routing_key=self._names.work(queue),
                        properties=_fresh(properties),
                    )
                tag = message.delivery.delivery_tag
                assert tag is not None  # a Basic.GetOk always carries one
                await channel.basic_ack(tag)
                done += chosen
        return done

    async def _ready(self, name: str) -> int:
        async with self._link.channel() as channel:
            return await self._passive(channel, name) or 0

    @staticmethod
    async def _passive(channel: aiormq.abc.AbstractChannel, name: str) -> int | None:
        """The ready messages of queue `name`, None if it does not exist (which closes
        `channel`)."""
        try:
            declared = await channel.queue_declare(name, passive=True)
        except aiormq.exceptions.ChannelNotFoundEntity:
            return None
        assert declared is not None  # not nowait
        return declared.message_count or 0


def _fresh(properties: spec.Basic.Properties) -> spec.Basic.Properties:
    """A dead letter's properties for its replay: due now, attempts reset, the reason
    dropped; priority and expiry kept."""
    headers = {
        name: value
        for name, value in (properties.headers or {}).items()
        if name not in (ERROR_HEADER, DUE_HEADER)
    }
    headers[ATTEMPT_HEADER] = 0
    return spec.Basic.Properties(
        delivery_mode=2,
        priority=properties.priority,
        message_id=properties.message_id,
        content_type="application/json",
        headers=headers,
    )
