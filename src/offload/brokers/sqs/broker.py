"""`SQSBroker`: the delivery role (`offload.brokers.roles.Delivery`) on SQS.

Jobs are SQS messages (`delivery.py`); a `Lease` is a received message, its token the
receipt handle, its deadline the visibility timeout. Every way a lease ends maps onto
SQS moves, batched per call:

    ack, cancel     delete the message
    retry           a new message due at `at`, the attempt counted; the old deleted
    defer           the same, the attempt not counted
    bury            a new message in the dead-letter queue with the reason
    release         a fresh copy due now, the attempt not counted (FIFO: in place)

What SQS cannot do is the state store's (`state=` in the URL; see `config.py` and
`offload.brokers.stateless`). With one, the store records every job and decides when it is due
(`offload.brokers.composite`): SQS only carries the copies the store `publish`es, due
now, each with the store's stamp (`Lease.stamp`), and the store's `Ledger.claim`
decides which delivered copy runs. Without a store, `enqueue` sends jobs itself and
refuses keys and `max_depth` with a `ConfigurationError` naming `state=`.
Priority has no meaning on SQS: jobs come in SQS's order (FIFO queues: strict).
A job received after its `expires_at` is deleted without running and logged (`expired` counts
them; only a state store can record it as `expired`).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence

from offload.brokers import records
from offload.brokers.part import Capabilities
from offload.brokers.records import Ending, EnqueueResult, Lease, Settlement
from offload.brokers.roles import Broker, Delivery
from offload.brokers.sqs.config import SQSConfig
from offload.brokers.sqs.delivery import SQSDelivery
from offload.brokers.sqs.facts import SQSFacts
from offload.brokers.sqs.messages import Outgoing, Received, encode_message
from offload.clock import Clock
from offload.codec import encode_error
from offload.envelope import Envelope

__all__ = ["SQSBroker"]

logger = logging.getLogger("offload.brokers.sqs")

#: The state store's register naming the one receipt of a copy that may run now (see
#: `SQSBroker._exclusive`), and the value a released copy leaves in it.
_RUNS = "sqs-runs:{job_id}:{stamp}"
_RELEASED = "released"
#: A stamp's room in a store's copy when `check_publish` measures it: twice the 16 hex
#: characters of the stores' stamps, so a longer one still fits.
_STAMP_ROOM = "0" * 32


class SQSBroker(Delivery):
    """Enqueue, reserve, extend, release and settle jobs on SQS (see the module
    docstring). One instance per event loop (`loop_bound`)."""

    capabilities = Capabilities(push_wakeup=True, loop_bound=True, lapsing_leases=True)

    def __init__(self, url: str, *, clock: Clock | None = None, **kwargs: float) -> None:
        super().__init__(url, clock=clock, **kwargs)
        self.config = SQSConfig.from_url(url)
        self.sqs = SQSDelivery(self.config, clock=self.clock)
        self._facts = SQSFacts(self.sqs)
        #: Receipt handle → the message it leases, for the leases this process holds.
        self._held: dict[str, Received] = {}
        self._lease_s = 30.0
        self._state: Broker | None = None
        #: Jobs deleted unrun because they were received after their `expires_at`.
        self.expired = 0

    async def connect(self) -> None:
        await self.sqs.connect()

    async def close(self) -> None:
        self._held.clear()
        await self.sqs.close()

    # -- enqueue ------------------------------------------------------------------------

    async def enqueue(
        self, jobs: Sequence[tuple[Envelope, bytes]], *, max_depth: int | None = None
    ) -> list[EnqueueResult]:
        """Send every job (batched; SQS has them when this returns), without a state
        store (with one, the store records jobs and `publish`es them).

        Raises:
            ConfigurationError: a job has a `key` or is a workflow step, or
                `max_depth` is given: these need a state store; nothing is sent.
            SerializationError: a job is over SQS's message size (nothing is sent).
            BrokerUnavailable: SQS could not be reached (resending is safe).
        """
        self.facts().check_enqueue(jobs, max_depth)
        items = {
            envelope.id: Outgoing(
                envelope.id,
                envelope.queue,
                payload,
                due=envelope.not_before,
                expires=envelope.expires_at,
            )
            for envelope, payload in jobs
        }
        await self.sqs.send(list(items.values()))
        return [EnqueueResult(envelope.id, True) for envelope, _ in jobs]

    async def publish(self, jobs: Sequence[records.Outgoing]) -> None:
        """Send a copy of each job for the state store, due now, carrying its stamp
        (also its FIFO deduplication id: a retried publish of one copy is one message,
        a new copy is another); return once SQS has every one. `priority` has no
        meaning on SQS.

        Raises:
            SerializationError: a job is over SQS's message size (nothing is sent).
            BrokerUnavailable: SQS could not be reached (the store publishes again).
        """
        await self.sqs.send(
            [Outgoing(j.job_id, j.queue, j.payload, send_id=j.stamp, stamp=j.stamp) for j in jobs]
        )

    def check_publish(self, jobs: Sequence[tuple[Envelope, bytes]]) -> None:
        """Refuse a job over SQS's message size before the state store records it:
        `publish` would refuse it later, every time `due` handed it out again (a
        "reserve failed" traceback every 30 s in each worker), while the enqueue that
        raised had left it `queued` in the store. Measured as `publish` sends it, with
        room for the stamp (the stores' are 16 hex characters) sent twice.

        Raises:
            SerializationError: naming the job and both sizes.
        """
        for envelope, payload in jobs:
            item = Outgoing(
                envelope.id, envelope.queue, payload, send_id=_STAMP_ROOM, stamp=_STAMP_ROOM
            )
            encode_message(item, self.config.max_message_bytes)

    def state_url(self) -> str | None:
        """The state store `state=` in the URL names."""
        return self.config.state

    def attach_state(self, state: Broker) -> None:
        """Working for a state store: its main queues get no redrive policy (see
        `topology.py`: the store buries a job whose workers keep dying), and a copy runs
        under one receipt at a time (`_exclusive`)."""
        self.sqs.topology.redrive = False
        self._state = state

    def facts(self) -> SQSFacts:
        """What SQS answers without a state store (`offload.brokers.stateless`)."""
        return self._facts

    # -- reserve ------------------------------------------------------------------------

    async def reserve(
        self, queues: Sequence[str], *, worker_id: str, lease_s: float, limit: int
    ) -> list[Lease]:
        """Receive up to `limit` due jobs, each leased (invisible to others) for
        `lease_s`. Never waits for jobs (a short poll); `wait` long-polls."""
        self._lease_s = lease_s
        messages = await self.sqs.receive(queues, limit=limit, visibility_s=lease_s)
        return await self._leases(messages)

    async def wait(self, queues: Sequence[str], timeout_s: float) -> None:
        """Long-poll `queues` for up to `timeout_s` (at most the URL's `wait`): returns
        as soon as a job arrives, which is kept leased for the next `reserve`."""
        if timeout_s < 1:
            await super().wait(queues, timeout_s)
            return
        got = await self.sqs.receive(queues, limit=10, visibility_s=self._lease_s, wait_s=timeout_s)
        self.sqs.keep(got)

    async def next_due(self, queues: Sequence[str]) -> float | None:
        """None: SQS holds delayed jobs itself and `wait` sees them arrive."""
        return None

    async def _leases(self, messages: Sequence[Received]) -> list[Lease]:
        """Leases for received messages, but none for a copy this process already holds
        a live lease on: SQS may hand one message to two receives at once (at-least-once
        delivery; moto does it under concurrent receives). The second receipt is left
        alone, not deleted (that would delete the message the first holder runs): it
        comes back once its visibility lapses, when the first has settled or died."""
        now = self.clock.now()
        stale = [m for m in messages if m.expires is not None and m.expires <= now]
        if stale:
            await self.sqs.delete(stale)
            self.expired += len(stale)
            for m in stale:  # no store records it: the log is the only trace (as on RabbitMQ)
                logger.info(
                    "job %s expired before it ran",
                    m.job_id,
                    extra={"action": "job_expired", "job_id": m.job_id},
                )
        live = {_copy(m) for m in self._held.values() if self.sqs.holds(m)}
        fresh: list[Received] = []
        for m in messages:
            if m not in stale and _copy(m) not in live:
                live.add(_copy(m))
                fresh.append(m)
        leases = []
        for m in await self._exclusive(fresh):
            self._held[m.receipt] = m
            leases.append(
                Lease(m.job_id, m.receipt, m.queue, m.attempt, m.deadline, m.body, m.stamp)
            )
        return leases

    async def _exclusive(self, messages: Sequence[Received]) -> list[Received]:
        """The messages whose copy no other receipt runs now, across processes.

        SQS may hand one message to two processes at once, and the state store's
        `claim` takes a running copy back (it reads a second delivery of one copy as
        its holder's death, which it is on RabbitMQ): both would run it. So each copy
        that runs holds the store's register `sqs-runs:JOB:STAMP` with its receipt
        (atomic `compare_and_set`), for the lease, renewed by `extend` and given up by
        `release`; a copy whose register another receipt holds is left alone (not
        deleted: that is the message the holder runs), to come back once its
        visibility lapses. A holder that died stops renewing, and its register lapses
        with its visibility. Without a state store there is nothing to share: all."""
        state = self._state
        if state is None or not messages:
            return list(messages)

        async def take(m: Received) -> bool:
            name = _RUNS.format(job_id=m.job_id, stamp=m.stamp)
            holder = await state.compare_and_set(name, None, m.receipt, ttl_s=self._lease_s)
            if holder == _RELEASED:
                holder = await state.compare_and_set(
                    name, _RELEASED, m.receipt, ttl_s=self._lease_s
                )
            return holder == m.receipt

        taken = await asyncio.gather(*(take(m) for m in messages))
        return [m for m, ok in zip(messages, taken, strict=True) if ok]

    async def _renew(
        self, messages: Sequence[Received], new: str | None, ttl_s: float
    ) -> list[bool]:
        """Renew (`new` None) or give up (`new`: `_RELEASED`) the registers of copies
        held here (`_exclusive`); whether each was still this receipt's."""
        state = self._state
        if state is None:
            return [True] * len(messages)

        async def renew(m: Received) -> bool:
            name = _RUNS.format(job_id=m.job_id, stamp=m.stamp)
            value = new or m.receipt
            return await state.compare_and_set(name, m.receipt, value, ttl_s=ttl_s) == value

        return list(await asyncio.gather(*(renew(m) for m in messages)))

    # -- leases -------------------------------------------------------------------------

    async def extend(self, leases: Sequence[Lease], lease_s: float) -> list[bool]:
        """Push each visibility `lease_s` further. False: stop claiming the job (the
        lease is not held here, lapsed, or SQS refused it; see `SQSDelivery.extend`)."""
        found = [(i, self._held.get(lease.token)) for i, lease in enumerate(leases)]
        held = [(i, m) for i, m in found if m is not None]
        answers = await self.sqs.extend([m for _, m in held], lease_s)
        if lease_s > 0:
            kept = [m for (_, m), ok in zip(held, answers, strict=True) if ok]
            still = iter(await self._renew(kept, None, lease_s))
            answers = [ok and next(still) for ok in answers]
        out = [False] * len(leases)
        for (i, message), ok in zip(held, answers, strict=True):
            out[i] = ok
            if not ok:
                self._held.pop(message.receipt, None)
        return out

    async def release(self, leases: Sequence[Lease]) -> None:
        """Give unstarted jobs back at once, the attempt not counted."""
        messages = [m for lease in leases if (m := self._held.pop(lease.token, None))]
        await self.sqs.release(messages)
        await self._renew(messages, _RELEASED, self._lease_s)

    async def settle_many(self, settlements: Sequence[Settlement]) -> list[bool]:
        """End every lease as its settlement says: deletes in batches, moves in
        batches. False for a lease not held here or no longer held, which includes a
        lease past its deadline (`lapsing_leases`: SQS may have handed the message to
        another consumer, and a delete with a stale receipt "succeeds" without
        deleting anything, so an ack then would count a job done that runs again
        elsewhere). If SQS cannot be
        reached the leases stay held here, so the caller's retry does the same again
        (a delete is idempotent; a move repeated may leave a second copy of the job,
        which runs again: at-least-once)."""
        out = [False] * len(settlements)
        deletes: list[tuple[int, Received]] = []
        moves: list[tuple[int, Received, Outgoing]] = []
        for i, settlement in enumerate(settlements):
            message = self._held.get(settlement.lease.token)
            if message is None:
                continue
            if not self.sqs.holds(message):
                self._held.pop(message.receipt, None)
            elif settlement.ending in (Ending.ACK, Ending.CANCEL):
                deletes.append((i, message))
            else:
                moves.append((i, message, _next_message(message, settlement)))
        deleted = await self.sqs.delete([m for _, m in deletes])
        moved = await self.sqs.move([(m, new) for _, m, new in moves])
        for (i, message), ok in zip(deletes, deleted, strict=True):
            out[i] = ok
            self._held.pop(message.receipt, None)
        for (i, message, _), ok in zip(moves, moved, strict=True):
            out[i] = ok
            self._held.pop(message.receipt, None)
        return out


def _copy(message: Received) -> tuple[str, str]:
    """Which copy of its job a message is: the store's stamp (a copy published twice is
    one copy), else SQS's own message id (without a store, a retry's new message is
    another copy of the job, to be leased even while the old one is still held here:
    its move deletes the old one only after sending the new)."""
    return (message.job_id, message.stamp or message.message_id)


def _next_message(message: Received, settlement: Settlement) -> Outgoing:
    """The message that carries the job on after `settlement` (retry, defer, bury)."""
    used = settlement.lease.attempt
    if settlement.ending is Ending.DEFER:
        return message.outgoing(attempt=used - 1, due=settlement.at)
    if settlement.ending is Ending.RETRY:
        return message.outgoing(attempt=used, due=settlement.at)
    assert settlement.error is not None  # bury
    return message.outgoing(attempt=used, due=None, error=encode_error(settlement.error).decode())
