"""Delivery on RabbitMQ: enqueue, reserve, extend, release and every way a lease ends.

**The lease is the delivery.** A reserved job is an unacknowledged AMQP delivery on this
process's consumer channel. While the connection lives, RabbitMQ gives the job to no
one else; when it dies (kill -9, a cut network, a broker restart) RabbitMQ requeues
the job at once. So `extend` has nothing to push forward: it reports whether the
delivery's session is still the live one (False once it is gone: the job is back in
its queue and may already run elsewhere). Two limits are RabbitMQ's, not offload's:

- `consumer_timeout` (server-wide in 3.10, 30 minutes by default): a delivery not
  acknowledged within it makes the server close the channel, which ends every lease
  on it. `extend` warns, once per lease, when a job nears it (`consumer_timeout=` in
  the URL says what the server is set to); raise it in rabbitmq.conf for longer jobs.
- a job's lease cannot outlive its connection: a worker cut off from RabbitMQ while a
  sync handler runs may see that job start elsewhere (at-least-once, as after a crash).
  Delivered again to this process, which still runs it, the job is not leased a
  second time: the running lease takes the new delivery (`_adopted`).

**Attempts.** A message is immutable, so the attempts already used travel in a header
(`offload-attempt`) set whenever offload republishes it (retry, defer, release). A
delivery RabbitMQ marks `redelivered` was held by a consumer that died without settling
it: before running it, the consumer republishes it with one more attempt counted and
acks the old copy, so a job that kills its workers is buried after `max_attempts`
crashes (the worker's `WorkerLost` rule) on classic queues too, which count nothing.

**Ends** (`offload.brokers.amqp._settling`): `ack` acknowledges a moment later, many
jobs to one frame; `retry`, `defer`, `release` and `bury` publish a copy and acknowledge
the old delivery once RabbitMQ confirmed it: at-least-once, never none.

**Producing** (`_publishing.py`): every publish waits for RabbitMQ's confirm. A plain
sync `enqueue` (one job due now, to a queue this process declared) is published from
the calling thread on a pooled pika connection (`_blocking.py`, `enqueue_blocking`),
without the sync portal's thread hop; the message is the same.

**Waking an idle worker.** An idle `wait_for_work` is the *taker*: the consumer callback
(a plain function, run in aiormq's reader turn) leases a plain delivery itself and
hands it over through a future, so the worker resumes one loop turn after the delivery.

**Delays and expiry.** `not_before` and `expires_at` travel as headers, so the
consumer never decodes a payload. See `offload.brokers.amqp.topology` for the buckets.
A job past `expires_at` when it is reserved is acknowledged and not run; without a
state store nothing records it as `expired` (`AmqpDelivery.expired` counts them).

**For a state store** (`publish`, `offload.brokers.composite`): the store keeps every
job's state, delays, retries, attempts and dead letters, and publishes a copy of a job
only when it should run; the copy carries the store's stamp as its `correlation_id`
(earlier versions: an `offload-stamp` header, still read), which the store checks when
the copy is delivered (`Ledger.claim`, which also gives the job's payload). Such copies
have no body and no headers (nothing for the consumer to read but the properties: no
due, expiry or attempt) and are never republished to count a crash: the store counts
it.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import itertools
import logging
import time
from collections.abc import Coroutine, Sequence
from dataclasses import dataclass

import aiormq.abc

from offload.brokers.amqp import topology
from offload.brokers.amqp._connection import Link, Session, unavailable
from offload.brokers.amqp._held import Held, Ready, note, token_of
from offload.brokers.amqp._publishing import Publishing
from offload.brokers.amqp._settling import Settling
from offload.brokers.amqp.facts import AmqpFacts
from offload.brokers.amqp.settings import parse_url
from offload.brokers.amqp.topology import (
    ATTEMPT_HEADER,
    DUE_HEADER,
    ERROR_HEADER,
    EXPIRES_HEADER,
    STAMP_HEADER,
)
from offload.brokers.part import Capabilities
from offload.brokers.records import (
    DEFAULT_RETENTION_S,
    EnqueueResult,
    Lease,
    Outgoing,
    Settlement,
)
from offload.brokers.roles import Delivery
from offload.clock import Clock
from offload.envelope import Envelope
from offload.errors import BrokerUnavailable

__all__ = [
    "ATTEMPT_HEADER",
    "DUE_HEADER",
    "ERROR_HEADER",
    "EXPIRES_HEADER",
    "STAMP_HEADER",
    "AmqpDelivery",
]

logger = logging.getLogger("offload.brokers.amqp")

#: A job consumed this early (ms) is already due (clock skew between hosts aside).
_EARLY_MS = 1
#: When `extend` warns that a lease nears the server's consumer timeout.
_TIMEOUT_WARNING = 0.8


class AmqpDelivery(Delivery):
    """The delivery role on RabbitMQ (see the module docstring).

    Args:
        url: an `amqp://` URL (`offload.brokers.amqp.settings`).
        clock: the source of `not_before`/`expires_at` comparisons and lease deadlines.
        retention_s: how long finished jobs are kept (by the state store).
    """

    capabilities = Capabilities(push_wakeup=True, loop_bound=True, blocking_enqueue=True)

    def __init__(
        self, url: str, *, clock: Clock | None = None, retention_s: float = DEFAULT_RETENTION_S
    ) -> None:
        super().__init__(url, clock=clock, retention_s=retention_s)
        self.settings = parse_url(url)
        self.names = topology.Names(self.settings.prefix)
        self.link = Link(self.settings)
        #: Jobs acknowledged unrun because `expires_at` had passed.
        self.expired = 0
        self._out = Publishing(self.link, self.settings, self.names)
        #: The offload queues this process enqueued to or consumed (RabbitMQ cannot list
        #: them: `AmqpFacts.names`).
        self.used = self._out.used
        self._facts = AmqpFacts(self.link, self.names, self.settings.queue_type, self.used)
        self._ready: list[Ready] = []
        #: (due ms, arrival, delivery): held until due; `arrival` is unique, so two
        #: deliveries due in the same millisecond never compare themselves.
        self._soon: list[tuple[int, int, Held]] = []
        self._held: dict[str, Held] = {}  # lease token → its delivery
        self._arrival = itertools.count()
        self._arrived = asyncio.Event()
        self._taker: _Taker | None = None  # an idle `wait_for_work`, handed a delivery
        self._consuming: dict[str, str] = {}  # AMQP queue name → offload queue
        self._consumer_tags: list[str] = []
        self._consuming_generation = 0
        self._prefetch = 0
        #: Delivery tags not acknowledged yet, per session generation: a `multiple` ack
        #: may only cover a run of tags that holds none of another job.
        self._unacked: dict[int, set[int]] = {}
        #: Jobs pushed to this process on a session that ended before it leased them:
        #: job id → (attempt header, whether that delivery was a redelivery). See
        #: `_uncount_unleased`.
        self._unleased: dict[str, tuple[int | None, bool]] = {}
        #: Every way a lease ends (`_settling.py`), on the held deliveries above.
        self._settling = Settling(
            self.link, self.names, self._out, self._held, self._unacked, self._alive, self._now_ms
        )

    # -- lifecycle ---------------------------------------------------------------------

    def state_url(self) -> str | None:
        """The state store `state=` in the URL names."""
        return self.settings.state_url

    def facts(self) -> AmqpFacts:
        """What RabbitMQ answers without a state store (`offload.brokers.stateless`)."""
        return self._facts

    async def connect(self) -> None:
        await self.link.session()

    async def close(self) -> None:
        """Give back the jobs received but not reserved (without counting an attempt),
        then close the connection; leases still held go back to their queues.

        The consumers are cancelled first: RabbitMQ sends `cancel-ok` after every
        delivery it made to them, so none is still on its way when the rest are given
        back (one in flight would come back marked `redelivered`, counted as a crash).
        """
        await self._settling.flush()
        session = self.link.current
        if session is not None:
            try:
                await self._stop_consuming(session)
                waiting = [d for _, _, d in self._ready if d.generation == session.generation]
                waiting += [d for _, _, d in self._soon if d.generation == session.generation]
                self._ready.clear()
                self._soon.clear()
                await asyncio.gather(*(self._settling.republish(d, delay_to=None) for d in waiting))
            except BrokerUnavailable:
                logger.debug("giving back prefetched jobs failed; RabbitMQ requeues them")
        self._out.close()
        await self.link.close()

    async def _stop_consuming(self, session: Session) -> None:
        tags, self._consumer_tags = self._consumer_tags, []
        try:
            for tag in tags:
                await session.consumer.basic_cancel(tag)
        except (aiormq.exceptions.AMQPError, ConnectionError, RuntimeError) as exc:
            raise unavailable("cancel consumer", exc) from exc

    # -- producer ----------------------------------------------------------------------

    async def enqueue(
        self, jobs: Sequence[tuple[Envelope, bytes]], *, max_depth: int | None = None
    ) -> list[EnqueueResult]:
        """Publish every job and return once RabbitMQ has confirmed all of them
        (without a state store: with one, the store records jobs and `publish`es them).

        Publishes are pipelined on one channel (one round trip for the whole batch, not
        one per job). Not atomic across jobs: if the connection drops mid-batch, some
        are stored and the call raises, and a retried call stores those again
        (at-least-once: without a store, a job id is not checked for duplicates).

        Raises:
            BrokerUnavailable: RabbitMQ is unreachable or refused a message.
            ConfigurationError: a job has a key or is a workflow step, or `max_depth`
                is given: these need a state store (`QueueFacts.check_enqueue`).
        """
        self.facts().check_enqueue(jobs, max_depth)
        return await self._out.enqueue(jobs, self._now_ms())

    def enqueue_blocking(
        self, jobs: Sequence[tuple[Envelope, bytes]], *, max_depth: int | None = None
    ) -> list[EnqueueResult] | None:
        """`enqueue` from the calling thread, on a pika connection (`_blocking.py`), for
        the plain case: one job, due now, to a queue this process declared already;
        None for anything else (the caller then uses `enqueue`). Returns once RabbitMQ
        confirmed the job; same errors as `enqueue`."""
        self.facts().check_enqueue(jobs, max_depth)
        if len(jobs) != 1:
            return None
        envelope, payload = jobs[0]
        if not self._out.publish_blocking(envelope, payload, self._now_ms()):
            return None
        return [EnqueueResult(envelope.id, True)]

    async def publish(self, jobs: Sequence[Outgoing]) -> None:
        """Publish a copy of each job for the state store, due now, with its stamp;
        return once RabbitMQ confirmed every one (pipelined, as `enqueue`).

        A copy has no body: the store's `claim` gives the lease the job's payload, so
        the message is its id and stamp only (two frames for a consumer to read, not
        three; nothing for RabbitMQ to write but the properties).

        Raises:
            BrokerUnavailable: RabbitMQ is unreachable or refused a message.
        """
        await self._out.copies(jobs, self._now_ms())

    # -- consumer ----------------------------------------------------------------------

    async def reserve(
        self, queues: Sequence[str], *, worker_id: str, lease_s: float, limit: int
    ) -> list[Lease]:
        """Lease up to `limit` jobs already delivered to this process, highest priority
        first, FIFO within a priority; never blocks (see `wait`).

        The first call for a queue starts consuming it (with a prefetch of
        `settings.prefetch`, or twice the largest `limit` seen).
        """
        session = await self.link.session()
        await self._consume(session, queues, limit)
        now = self.clock.now()
        now_ms = round(now * 1000)
        self._promote(now_ms)
        leases: list[Lease] = []
        skipped: list[Ready] = []
        moves: list[Coroutine[object, object, None]] = []
        while self._ready and len(leases) < limit:
            entry = heapq.heappop(self._ready)
            delivery = entry[2]
            if delivery.generation != session.generation:
                continue  # its session is gone, and RabbitMQ requeued it
            if delivery.redelivered:
                self._uncount_unleased(delivery)
            if delivery.queue not in queues:
                skipped.append(entry)
            elif delivery.redelivered and self._adopted(delivery):
                continue
            elif delivery.redelivered and self._settling.ended_here(delivery):
                moves.append(self._settling.ack(delivery))  # its run ended here already
            elif self._held_back(delivery, now_ms):
                continue
            elif (move := self._moved(delivery, now_ms)) is not None:
                moves.append(move)
            else:
                leases.append(self._lease(delivery, now, lease_s))
        for entry in skipped:
            heapq.heappush(self._ready, entry)
        if moves:
            await asyncio.gather(*moves)
        return leases

    def _adopted(self, delivery: Held) -> bool:
        """Whether `delivery` is a job this process is still running, requeued by
        RabbitMQ when the connection it was leased on ended (a cut, a proxy, a broker
        restart) and delivered again here: it must not run a second time beside the
        first. The lease of that run now stands for the new delivery: extending it says
        it is held, settling it acknowledges (or republishes) the new one, so the job
        ends once, through the run that was already going."""
        for token, held in self._held.items():
            if held.message_id == delivery.message_id and not self._alive(held):
                self._held[token] = delivery
                logger.debug("job %s: delivered again while running here; kept", held.message_id)
                return True
        return False

    def _forget_unleased(self, live: int) -> None:
        """A new session: the deliveries of ended ones this process still holds unleased
        (pushed ahead, or held until due) are gone from it, and RabbitMQ requeued them;
        note them, so that their return is not counted as a crash (`_uncount_unleased`)."""
        pending = [d for _, _, d in self._ready] + [d for _, _, d in self._soon]
        for d in pending:
            if d.generation != live:
                note(self._unleased, d.message_id, (d.header(ATTEMPT_HEADER), d.redelivered))
        self._ready = [e for e in self._ready if e[2].generation == live]
        heapq.heapify(self._ready)
        self._soon = [e for e in self._soon if e[2].generation == live]
        heapq.heapify(self._soon)

    def _uncount_unleased(self, delivery: Held) -> None:
        """A redelivery of one this process held unleased when its session ended:
        RabbitMQ marks it redelivered, but it never ran here, so it counts as it was
        first delivered (a redelivery only if that one was)."""
        noted = self._unleased.pop(delivery.message_id, None)
        if noted is not None and noted == (delivery.header(ATTEMPT_HEADER), False):
            delivery.redelivered = False

    def _held_back(self, delivery: Held, now_ms: int) -> bool:
        """Keep a delivery due sooner than the shortest bucket here until it is due."""
        if not delivery.headers:  # a job due now: the usual case
            return False
        due = delivery.header(DUE_HEADER)
        if due is None or due <= now_ms + _EARLY_MS or topology.bucket_for(due - now_ms):
            return False
        heapq.heappush(self._soon, (due, next(self._arrival), delivery))
        return True

    def _moved(self, delivery: Held, now_ms: int) -> Coroutine[object, object, None] | None:
        """What a delivery needs before it may run: None if nothing (lease it), else
        the ack of an expired job, or the republish that counts a crash or delays it
        to the next bucket. A state store's copy needs nothing: the store decides."""
        if delivery.stamp is not None or not (delivery.headers or delivery.redelivered):
            return None  # a store's copy (the store decides), or a new job due now
        expires = delivery.header(EXPIRES_HEADER)
        if expires is not None and expires <= now_ms:
            self.expired += 1
            logger.info(
                "job %s expired before it ran",
                delivery.properties.message_id,
                extra={"action": "job_expired", "job_id": delivery.properties.message_id},
            )
            return self._settling.ack(delivery)
        due = delivery.header(DUE_HEADER)
        if delivery.redelivered:
            return self._settling.republish(delivery, delay_to=due, counted=1)
        if due is not None and due > now_ms + _EARLY_MS:
            return self._settling.republish(delivery, delay_to=due)
        return None

    def _promote(self, now_ms: int) -> None:
        while self._soon and self._soon[0][0] <= now_ms + _EARLY_MS:
            _, _, delivery = heapq.heappop(self._soon)
            heapq.heappush(self._ready, (-delivery.priority, next(self._arrival), delivery))

    def _lease(self, delivery: Held, now: float, lease_s: float) -> Lease:
        token = token_of(delivery)
        self._held[token] = delivery
        return Lease(
            job_id=delivery.message_id,
            token=token,
            queue=delivery.queue,
            attempt=(delivery.header(ATTEMPT_HEADER) or 0) + 1,
            deadline=now + lease_s,
            payload=delivery.body,
            stamp=delivery.stamp,
        )

    async def wait(self, queues: Sequence[str], timeout_s: float) -> None:
        """Return once a job may be ready for this process (a delivery arrived, or a
        held one is due), or after `timeout_s`."""
        if self._ready:
            return
        if self._soon:
            timeout_s = min(timeout_s, max(0.0, self._soon[0][0] / 1000 - self.clock.now()))
        self._arrived.clear()
        try:
            async with asyncio.timeout(timeout_s):
                await self._arrived.wait()
        except TimeoutError:
            pass

    async def wait_for_work(
        self,
        queues: Sequence[str],
        timeout_s: float,
        *,
        worker_id: str,
        lease_s: float,
        limit: int,
    ) -> list[Lease]:
        """`reserve`; if nothing is ready, wait and return what arrived: RabbitMQ pushes
        jobs to this process, so the one that ends the wait is here already.

        An idle call (nothing held at all) waits as the *taker*: the consumer callback
        leases a plain delivery (due now, no expiry, not redelivered) of its queues
        itself and hands it over through a future, so the worker gets it one loop turn
        after RabbitMQ delivered it, without a `reserve` (or the task it runs in) after
        the wake-up. Anything else (a delivery to check first, one held for later)
        goes through the heap and a `reserve` after the wait. A cancelled call gives
        back at once what it was handed or leased (`_given_back_if_cancelled`)."""
        reserve = self.reserve(queues, worker_id=worker_id, lease_s=lease_s, limit=limit)
        if leases := await self._given_back_if_cancelled(reserve):
            return leases
        if not (self._ready or self._soon or self._taker):  # idle, and the only taker
            taker = _Taker(frozenset(queues), lease_s, asyncio.get_running_loop().create_future())
            if handed := await self._handed(taker, timeout_s):
                return handed
        else:
            await self.wait(queues, timeout_s)
        if not (self._ready or self._soon):
            return []
        reserve = self.reserve(queues, worker_id=worker_id, lease_s=lease_s, limit=limit)
        return await self._given_back_if_cancelled(reserve)

    async def _handed(self, taker: _Taker, timeout_s: float) -> list[Lease]:
        """Wait as the taker until a delivery is handed over (its lease), another one
        arrives (nothing: the caller reserves), or `timeout_s` passes (nothing)."""
        self._taker = taker
        leases = taker.leases
        try:
            async with asyncio.timeout(timeout_s):
                return await leases
        except TimeoutError:
            pass
        except asyncio.CancelledError:
            if leases.done() and not leases.cancelled():  # handed as the caller left
                with contextlib.suppress(Exception):
                    await self.release(leases.result())
            raise
        finally:
            self._taker = None
        # Handed in the loop turn the timeout fired in, or not at all.
        return leases.result() if leases.done() and not leases.cancelled() else []

    async def _consume(self, session: Session, queues: Sequence[str], limit: int) -> None:
        if session.generation != self._consuming_generation:
            self._forget_unleased(session.generation)
            self._consuming = {}
            self._consumer_tags = []
            self._consuming_generation = session.generation
            self._prefetch = 0
            self._unacked.clear()  # in place: `Settling` shares it
            self._unacked[session.generation] = set()
        wanted = self.settings.prefetch or max(16, 2 * limit)
        try:
            if wanted > self._prefetch:
                await session.consumer.basic_qos(prefetch_count=wanted, global_=True)
                self._prefetch = wanted
            for queue in queues:
                name = self.names.work(queue)
                if name in self._consuming:
                    continue
                await self._out.declare_work(queue)
                ok = await session.consumer.basic_consume(
                    name, self._receiver(queue, session.generation), no_ack=False
                )
                self._consumer_tags.append(str(ok.consumer_tag))
                self._consuming[name] = queue
        except (aiormq.exceptions.AMQPError, ConnectionError, RuntimeError) as exc:
            raise unavailable("consume", exc) from exc

    def _receiver(self, queue: str, generation: int) -> aiormq.abc.ConsumerCallback:
        """The consumer callback of `queue`'s consumer on session `generation`.

        A plain function, not a coroutine function: aiormq calls it in the reader's own
        loop turn and runs what it returns as a task, so the delivery is held (or
        handed to the taker) in that turn, a loop turn before an `async def` callback's
        task would start; what it returns is a coroutine that does nothing."""

        def receive(message: aiormq.abc.DeliveredMessage) -> Coroutine[object, object, None]:
            delivery = Held(queue, message, generation, time.monotonic())
            self._unacked.setdefault(generation, set()).add(delivery.tag)
            taker, self._taker = self._taker, None
            if taker is not None and not taker.leases.done():  # an idle `wait_for_work`
                if (
                    queue in taker.queues
                    and generation == self._consuming_generation
                    and not (delivery.headers or delivery.redelivered)
                ):
                    lease = self._lease(delivery, self.clock.now(), taker.lease_s)
                    taker.leases.set_result([lease])  # a job it may run at once
                    return _nothing()
                taker.leases.set_result([])  # one to check first: it reserves
            heapq.heappush(self._ready, (-delivery.priority, next(self._arrival), delivery))
            self._arrived.set()
            return _nothing()

        return receive

    # -- leases ------------------------------------------------------------------------

    async def extend(self, leases: Sequence[Lease], lease_s: float) -> list[bool]:
        """True for each lease whose delivery is still held on the live session: RabbitMQ
        keeps it for this process until it is settled or the connection ends, so there
        is no deadline to push. Warns once per job that nears `consumer_timeout`."""
        held: list[bool] = []
        for lease in leases:
            delivery = self._held.get(lease.token)
            alive = delivery is not None and self._alive(delivery)
            if alive and delivery is not None:
                self._warn_timeout(delivery, lease_s)
            held.append(alive)
        return held

    def _warn_timeout(self, delivery: Held, lease_s: float) -> None:
        limit = self.settings.consumer_timeout_s
        age = time.monotonic() - delivery.received
        if delivery.warned or age + lease_s < _TIMEOUT_WARNING * limit:
            return
        delivery.warned = True
        logger.warning(
            "job %s has run %.0f s, near RabbitMQ's consumer_timeout (%.0f s): the server "
            "will then close the channel and give the job to another worker; raise "
            "consumer_timeout in rabbitmq.conf (and consumer_timeout= in the amqp:// URL)",
            delivery.properties.message_id,
            age,
            limit,
            extra={"action": "lease_near_timeout", "job_id": delivery.properties.message_id},
        )

    def _alive(self, delivery: Held) -> bool:
        """Whether the delivery's session is the live one (else RabbitMQ requeued it)."""
        session = self.link.current
        return session is not None and delivery.generation == session.generation

    # -- settlement ----------------------------------------------------------------------

    async def next_due(self, queues: Sequence[str]) -> float | None:
        """None: a delayed job comes out of its bucket by itself, pushed to a consumer
        (`wait` returns then), so an idle worker need not wake up for it."""
        return None

    async def settle_many(self, settlements: Sequence[Settlement]) -> list[bool]:
        """End each lease (see `Ending`): `ack` and `cancel` acknowledge the delivery
        (within `_acks.LINGER_S`, many to one frame: `_acks.py`); `retry` and `defer`
        republish the job to its delay bucket (`retry` counting the
        attempt), `bury` to the dead-letter queue, each acknowledging the delivery once
        RabbitMQ confirmed the copy. False for a lease whose delivery is no longer held
        (its connection ended: RabbitMQ requeued the job).

        Raises:
            BrokerUnavailable: a copy was not confirmed; those leases are still held
                (the worker retries them), the others took effect.
        """
        return await self._settling.settle_many(settlements)

    async def drop(self, copies: Sequence[Lease]) -> None:
        """Acknowledge a state store's copies (`Delivery.drop`) as `settle_many` does
        its acks (within `_acks.LINGER_S`, many to a frame): a lost ack brings the copy
        back, and the store refuses it then."""
        await self._settling.drop(copies)

    async def release(self, leases: Sequence[Lease]) -> None:
        """Give jobs back at once, the attempt not counted; leases no longer held are
        ignored."""
        await self._settling.release(leases)

    def _now_ms(self) -> int:
        return round(self.clock.now() * 1000)


@dataclass(frozen=True, slots=True)
class _Taker:
    """An idle `wait_for_work`: its queues, lease time, and the future the consumer
    callback hands a lease through."""

    queues: frozenset[str]
    lease_s: float
    leases: asyncio.Future[list[Lease]]


async def _nothing() -> None:
    """What the consumer callback gives aiormq to run: its work is done already."""
