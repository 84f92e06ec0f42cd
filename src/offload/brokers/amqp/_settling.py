"""The settling side of the RabbitMQ delivery: every way a lease ends
(`offload.brokers.amqp.delivery` settles, drops and releases through `Settling`, and
acknowledges or republishes through it what `reserve` must not run).

`ack` and `cancel` (and a state store's `drop`) acknowledge the delivery, a moment
later and many jobs to one `multiple` ack frame (`offload.brokers.amqp._acks`: an ack
has no reply, so a lost connection brings the job back either way). `retry`, `defer`
and `release` publish the job again (to a delay bucket, or its work queue) and
acknowledge the old delivery once RabbitMQ confirmed the new one; `bury` does the same
with the dead-letter queue. A crash between the two leaves both copies: at-least-once,
never none. A copy carries the attempts already used in a header (a message is
immutable), and not RabbitMQ's dead-lettering history (`_clean`).

A module of its own because how a lease ends shares nothing with how it began
(consuming, the ready heap, leasing, waiting: `delivery.py`) but the held deliveries
and their unacknowledged tags, which `Settling` is handed.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence

import aiormq.abc
from pamqp import commands as spec
from pamqp.common import FieldTable

from offload.brokers.amqp import topology
from offload.brokers.amqp._acks import AckLinger
from offload.brokers.amqp._connection import Link, unavailable
from offload.brokers.amqp._held import Held, note, token_of
from offload.brokers.amqp._publishing import Publishing
from offload.brokers.amqp.topology import (
    ATTEMPT_HEADER,
    CONTENT_TYPE,
    DUE_HEADER,
    ERROR_HEADER,
    PERSISTENT,
)
from offload.brokers.records import Ending, Lease, Settlement
from offload.codec import encode_error
from offload.envelope import ErrorInfo
from offload.errors import BrokerUnavailable, LeaseLost

__all__ = ["Settling"]


class Settling:
    """Ends the leases of an `AmqpDelivery` (see the module docstring).

    Args:
        link: the delivery's connection.
        names: the delivery's queue names.
        out: the delivery's publisher (a job given back, retried or buried).
        held: the delivery's leased deliveries by lease token, shared: leasing adds
            to it, settling takes from it.
        unacked: the delivery's unacknowledged delivery tags per session generation,
            shared: the consumer callback adds to it, acks take from it.
        alive: whether a delivery's session is still the live one.
        now_ms: the delivery's clock, in ms.
    """

    def __init__(
        self,
        link: Link,
        names: topology.Names,
        out: Publishing,
        held: dict[str, Held],
        unacked: dict[int, set[int]],
        alive: Callable[[Held], bool],
        now_ms: Callable[[], int],
    ) -> None:
        self.link = link
        self.names = names
        self._out = out
        self._held = held
        self._unacked = unacked
        self._alive = alive
        self._now_ms = now_ms
        #: Jobs that ended here whose ack never reached RabbitMQ (its connection ended
        #: first): job id → the attempt header of that delivery (`ended_here`).
        self._ended: dict[str, int | None] = {}
        #: Settled jobs' acks, sent a moment later many to a frame (`_acks.py`).
        self._acks = AckLinger(
            lambda held: self._ack_many(held, wait=False), self._alive, lost=self._unsent
        )

    async def flush(self) -> None:
        """Send the acks still waiting (`AckLinger.flush`; the delivery's `close`)."""
        await self._acks.flush()

    async def settle_many(self, settlements: Sequence[Settlement]) -> list[bool]:
        """`AmqpDelivery.settle_many`: the acks wait in `_acks`, the rest republish."""
        done: list[bool] = [False] * len(settlements)
        acks: list[Held] = []
        moves: list[tuple[int, Settlement]] = []
        live = self._live_generation()
        for i, item in enumerate(settlements):
            if item.ending is Ending.ACK or item.ending is Ending.CANCEL:
                delivery = self._held.pop(item.lease.token, None)
                if delivery is not None and delivery.generation == live:
                    acks.append(delivery)
                    done[i] = True  # else no longer held: False
                elif delivery is not None:
                    self._unsent([delivery])
            else:
                moves.append((i, item))
        self._acks.add(acks)
        if not moves:  # the usual batch: acks only
            return done
        outcomes = await asyncio.gather(
            *(self._settle(item) for _, item in moves), return_exceptions=True
        )
        failure: BaseException | None = None
        for (i, _), outcome in zip(moves, outcomes, strict=True):
            if isinstance(outcome, BaseException):
                failure = failure or outcome
            else:
                done[i] = bool(outcome)
        if failure is not None:
            raise failure
        return done

    def _unsent(self, deliveries: list[Held]) -> None:
        """Note jobs that ended here (acked or cancelled) whose ack RabbitMQ never got:
        it requeues them, and one delivered to this process again is acknowledged
        unrun (`ended_here`)."""
        for delivery in deliveries:
            if delivery.stamp is None:  # a store's copy: the store refuses it anyway
                note(self._ended, delivery.message_id, delivery.header(ATTEMPT_HEADER))

    def ended_here(self, delivery: Held) -> bool:
        """Whether `delivery` (redelivered) is a job that ended here after the
        connection it was leased on was cut: its ack is all it still needs."""
        if delivery.message_id not in self._ended:
            return False
        if self._ended[delivery.message_id] != delivery.header(ATTEMPT_HEADER):
            return False  # another attempt's copy (a retry): it runs
        del self._ended[delivery.message_id]
        return True

    async def drop(self, copies: Sequence[Lease]) -> None:
        """`AmqpDelivery.drop`: the copies' acks wait in `_acks` as `settle_many`'s do."""
        taken = []
        for copy in copies:
            delivery = self._held.pop(copy.token, None)
            if delivery is not None and self._alive(delivery):
                taken.append(delivery)
        self._acks.add(taken)

    async def release(self, leases: Sequence[Lease]) -> None:
        """`AmqpDelivery.release`: each job republished to its work queue, due now."""
        moves = []
        for lease in leases:
            try:
                moves.append(self.republish(self._take(lease), delay_to=None))
            except LeaseLost:
                continue
        await asyncio.gather(*moves)

    def _take(self, lease: Lease) -> Held:
        """The delivery of a lease still held on the live session, now no longer held.

        Raises:
            LeaseLost: its session is gone (RabbitMQ requeued it), or it was settled.
        """
        delivery = self._held.pop(lease.token, None)
        if delivery is None or not self._alive(delivery):
            raise LeaseLost(f"job {lease.job_id}: its RabbitMQ delivery is no longer held")
        return delivery

    def _live_generation(self) -> int | None:
        """The live session's generation (None without one): a delivery of any other
        was requeued by RabbitMQ when its connection ended."""
        session = self.link.current
        return None if session is None else session.generation

    async def _ack_many(self, deliveries: Sequence[Held], *, wait: bool = True) -> None:
        """Acknowledge deliveries of the live session: one `multiple` ack for those
        below every other unacknowledged delivery of the channel (usually all of them:
        jobs end roughly in the order they came), one ack each for the rest. `wait`:
        return once the frames are written (else once they are queued)."""
        if not deliveries:
            return
        channel = deliveries[0].channel
        tags = sorted(d.tag for d in deliveries)
        others = self._unacked.get(deliveries[0].generation, set()).difference(tags)
        floor = min(others, default=None)
        run = [t for t in tags if floor is None or t < floor]
        single = tags[len(run) :]
        try:
            if run:
                await channel.basic_ack(run[-1], multiple=len(run) > 1, wait=wait)
            await asyncio.gather(*(channel.basic_ack(tag, wait=wait) for tag in single))
        except (aiormq.exceptions.AMQPError, RuntimeError, ConnectionError) as exc:
            raise unavailable("ack", exc) from exc
        self._unacked.get(deliveries[0].generation, set()).difference_update(tags)

    async def _settle(self, item: Settlement) -> bool:
        try:
            delivery = self._take(item.lease)
        except LeaseLost:
            return False
        try:
            if item.ending in (Ending.ACK, Ending.CANCEL):
                await self.ack(delivery)
            elif item.ending is Ending.BURY:
                assert item.error is not None  # Settlement checks it
                await self._bury(delivery, item.lease.attempt, item.error)
            else:
                assert item.at is not None  # Settlement checks it
                counted = 1 if item.ending is Ending.RETRY else 0
                await self.republish(delivery, delay_to=round(item.at * 1000), counted=counted)
        except BrokerUnavailable:
            if self._alive(delivery):
                self._held[token_of(delivery)] = delivery  # not settled: still ours
                raise
            return False
        return True

    async def _bury(self, delivery: Held, attempt: int, error: ErrorInfo) -> None:
        """Copy the job to its queue's dead-letter queue with `error`, then ack."""
        name = self.names.dead(delivery.queue)
        await self.link.declare_queue(name, topology.dead_arguments())
        headers = dict(delivery.headers)
        headers[ATTEMPT_HEADER] = attempt
        headers[ERROR_HEADER] = encode_error(error).decode()
        properties = spec.Basic.Properties(
            delivery_mode=PERSISTENT,
            priority=delivery.properties.priority,  # kept for a replay
            message_id=delivery.properties.message_id,
            content_type=CONTENT_TYPE,
            headers=_clean(headers),
            correlation_id=delivery.properties.correlation_id,
        )
        await self.link.publish(delivery.body, routing_key=name, properties=properties)
        await self.ack(delivery)

    async def republish(self, delivery: Held, *, delay_to: int | None, counted: int = 0) -> None:
        """Publish a copy of the delivery (due at `delay_to` ms, attempts `+counted`),
        then ack the original once the copy is confirmed. A state store's copy keeps
        its stamp, and no headers (the store counts its attempts)."""
        stamp = delivery.stamp
        headers = {} if stamp is not None else dict(delivery.headers)
        headers[ATTEMPT_HEADER] = (delivery.header(ATTEMPT_HEADER) or 0) + counted
        if delay_to is not None:
            headers[DUE_HEADER] = delay_to
        else:
            headers.pop(DUE_HEADER, None)
        await self._out.publish_one(
            delivery.body,
            queue=delivery.queue,
            job_id=delivery.message_id,
            priority=delivery.priority,
            headers=None if stamp is not None else _clean(headers),
            now_ms=self._now_ms(),
            stamp=stamp,
        )
        await self.ack(delivery)

    async def ack(self, delivery: Held) -> None:
        """Acknowledge one delivery now, not through `_acks`: the original of a copy
        just confirmed, or a job `reserve` found expired."""
        try:
            await delivery.channel.basic_ack(delivery.tag)
        except (aiormq.exceptions.AMQPError, RuntimeError, ConnectionError) as exc:
            # The channel is gone, so RabbitMQ requeued the message: the copy we may
            # have published makes it at-least-once, never lost.
            raise unavailable("ack", exc) from exc
        self._unacked.get(delivery.generation, set()).discard(delivery.tag)


def _clean(headers: FieldTable) -> FieldTable:
    """Headers for a republished copy: RabbitMQ's dead-lettering history (`x-death`,
    `x-first-death-*`) and the old bucket's routing header are dropped, so a job that
    hops through many buckets keeps a small message."""
    return {
        name: value
        for name, value in headers.items()
        if not name.startswith("x-") and name != topology.DELAY_HEADER
    }
