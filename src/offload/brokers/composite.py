"""A broker made of parts: one object's delivery, another's flow, inspection, fleet and
signals.

A message queue (RabbitMQ, SQS) can deliver jobs but keeps no job state, flow limits,
worker registry or cancel flags. Rather than a second copy of that logic in every such
broker, `Composite` takes its `Delivery` and borrows the other roles from a full broker,
the state store (SQLite, PostgreSQL, Redis, memory). It is a `Broker` itself, so the
worker, the app and the CLI never know.

    broker = with_state_store(RabbitMQBroker("amqp://…"), from_url("postgresql://…"))

`from_url` builds one when a URL names a delivery-only broker: the state store's URL
comes from the `state_url` argument or `OFFLOAD_STATE_URL`, and a missing one is a
`ConfigurationError` naming that setting.

**The store keeps every job's state; the delivery only carries copies.** The store
plays `Ledger` (`offload.brokers.roles`), and each delivery call goes through it:

- `enqueue`: the store records the jobs (keys, depth, expiry: one atomic step, as its
  own enqueue), then the delivery publishes those created and due now, each copy with
  the stamp the store gave it, and the store hears they are held (`published`). A
  publish that fails leaves them recorded and unconfirmed: the call still returns
  (the jobs are durable in the store, a warning is logged), and `Ledger.due` hands
  them out again after `PUBLISH_GRACE_S`.
- `reserve`: the delivery's deliveries are claimed in the store (`Ledger.claim`): a
  claimed copy is a lease of the store (its token is the lease's), a refused one
  (stale, cancelled, expired, finished) is acknowledged in the delivery unrun. Every
  `DUE_POLL_S` the same store call (`Ledger.claim_due`; `due` alone when nothing was
  delivered) also hands out the store's due jobs (delays, retries, deferrals, replays
  and unconfirmed publishes), which are published then.
- `settle_many`: the store records every ending (results, retries as `scheduled`,
  dead letters, the outbox), then the delivery acknowledges every copy: what runs
  again is published anew by `due`. `extend` and `release` reach both.
- A lease cannot lapse in the store: a copy whose holder died comes back from the
  delivery (RabbitMQ requeues it when the connection ends; SQS when its visibility
  timeout passes) and `claim` takes the job back with the attempt counted.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
from collections.abc import Sequence

import msgspec

from offload.brokers.ledger import PUBLISH_GRACE_S, Ledger
from offload.brokers.part import Capabilities
from offload.brokers.records import (
    Ended,
    EnqueueResult,
    Finished,
    JobInfo,
    Lease,
    Outgoing,
    Page,
    QueueStats,
    Settlement,
    SweepReport,
    WorkerInfo,
)
from offload.brokers.roles import (
    Broker,
    Delivery,
    Fleet,
    Flow,
    Inspection,
    Role,
    Signals,
    roles_of,
)
from offload.codec import decode_envelope
from offload.envelope import Envelope, ErrorInfo, JobState
from offload.errors import BrokerError, ConfigurationError, SerializationError

__all__ = ["STATE_URL_SETTING", "Composite", "missing_roles", "with_state_store"]

#: How a user names the state store of a delivery-only broker, quoted in errors.
STATE_URL_SETTING = (
    "state_url (env OFFLOAD_STATE_URL, or state= in an amqp:// URL: amqp://…/?state=sqlite:///…)"
)

logger = logging.getLogger("offload.brokers.composite")

#: How often a worker's `reserve` asks the state store for due jobs, in seconds of the
#: broker's clock (sooner after this process settled a retry or a deferral): one store
#: read saved on most reservations of a busy worker, at most this late for a delay.
DUE_POLL_S = 0.2


def missing_roles(obj: object) -> list[Role]:
    """The roles a whole broker needs that `obj` does not play, in `Role` order."""
    have = roles_of(obj)
    return [role for role in Role if role not in have]


def require_roles(obj: object, what: str) -> None:
    """Raise a `ConfigurationError` naming the roles `obj` lacks and the setting that
    would give them."""
    missing = missing_roles(obj)
    if missing:
        names = ", ".join(role.name.lower() for role in missing)
        raise ConfigurationError(
            f"{what} only delivers jobs; the roles {names} need a state store: "
            f"set {STATE_URL_SETTING} to a sqlite:/// or postgresql:// URL"
        )


class Composite(Broker):
    """A `Broker` whose roles are played by other objects (see the module docstring).

    Each role goes to the object given for it; `connect` and `close` reach every
    distinct object once. Capabilities come from the role they are about: the
    delivery's enqueue and wake-ups, the signals' result pushes. With a `ledger` (the
    state store), every delivery call goes through it as the module docstring says;
    without one the delivery calls go to the delivery alone (it then keeps no state
    the other roles could see: `offload.brokers.stateless`).
    """

    def __init__(
        self,
        delivery: Delivery,
        *,
        flow: Flow,
        inspection: Inspection,
        fleet: Fleet,
        signals: Signals,
        ledger: Ledger | None = None,
    ) -> None:
        super().__init__(delivery.url, clock=delivery.clock, retention_s=inspection.retention_s)
        self.delivery = delivery
        self.flow = flow
        self.inspection = inspection
        self.fleet = fleet
        self.signals = signals
        self.ledger = ledger
        #: The store's lease token → the delivery's lease of the same copy.
        self._copies: dict[str, Lease] = {}
        #: When `reserve` next asks the store what is due (`Ledger.due`), by the clock.
        self._due_check = 0.0
        parts: list[Delivery | Flow | Inspection | Fleet | Signals | Ledger] = [
            delivery,
            flow,
            inspection,
            fleet,
            signals,
        ]
        if ledger is not None:
            parts.append(ledger)
        self._parts = list({id(part): part for part in parts}.values())
        caps = delivery.capabilities
        self.capabilities = Capabilities(
            transactional_enqueue=caps.transactional_enqueue and ledger is None,
            push_wakeup=caps.push_wakeup,
            push_results=signals.capabilities.push_results,
            blocking_enqueue=caps.blocking_enqueue and ledger is None,
            lapsing_leases=caps.lapsing_leases,
            cross_process=all(part.capabilities.cross_process for part in self._parts),
            loop_bound=any(part.capabilities.loop_bound for part in self._parts),
        )

    async def connect(self) -> None:
        for part in self._parts:
            await part.connect()

    async def close(self) -> None:
        for part in reversed(self._parts):
            await part.close()

    # -- delivery ----------------------------------------------------------------------

    async def enqueue(
        self, jobs: Sequence[tuple[Envelope, bytes]], *, max_depth: int | None = None
    ) -> list[EnqueueResult]:
        if self.ledger is None:
            return await self.delivery.enqueue(jobs, max_depth=max_depth)
        self.delivery.check_publish(jobs)  # a job it could never publish: store none
        results, outgoing = await self.ledger.record(jobs, max_depth=max_depth)
        await self._publish(outgoing)
        return results

    def enqueue_blocking(
        self, jobs: Sequence[tuple[Envelope, bytes]], *, max_depth: int | None = None
    ) -> list[EnqueueResult] | None:
        if self.ledger is None:
            return self.delivery.enqueue_blocking(jobs, max_depth=max_depth)
        return None

    async def _publish(self, outgoing: Sequence[Outgoing]) -> None:
        """Publish what the store handed out, then tell it the copies are held. A
        failure leaves them unconfirmed: `Ledger.due` hands them out again later."""
        assert self.ledger is not None
        if not outgoing:
            return
        try:
            await self.delivery.publish(outgoing)
            await self.ledger.published(outgoing)
        except SerializationError as exc:
            # A job no message can carry (stored before `check_publish` refused such
            # jobs, or the size limit lowered since): publish the others one by one
            # and bury it with the reason, instead of failing every `reserve` that
            # meets it, and the jobs due beside it, for ever.
            if len(outgoing) > 1:
                for job in outgoing:
                    await self._publish([job])
            else:
                await self._bury_unsendable(outgoing[0], exc)
        except BrokerError as exc:
            logger.warning(
                "publishing %d job(s) failed (%s); they are kept in the state store and "
                "published again within %.0f s",
                len(outgoing),
                exc,
                PUBLISH_GRACE_S,
                extra={"action": "publish_failed", "jobs": len(outgoing)},
            )

    async def _bury_unsendable(self, job: Outgoing, error: SerializationError) -> None:
        """Bury in the store a job the delivery refuses to carry: claimed as if its copy
        were delivered (the store's lease), then settled dead with the reason."""
        assert self.ledger is not None
        copy = Lease(job.job_id, "", job.queue, 0, 0.0, b"", job.stamp)
        [lease] = await self.ledger.claim([copy], worker_id="offload", lease_s=60.0)
        if lease is None:  # meanwhile cancelled, expired or handed out anew
            return
        reason = ErrorInfo("SerializationError", str(error))
        await self._store_delivery().settle_many([Settlement.bury(lease, error=reason)])
        logger.error(
            "job %s cannot be published (%s): buried",
            job.job_id,
            error,
            extra={"action": "buried", "job_id": job.job_id},
        )

    async def reserve(
        self, queues: Sequence[str], *, worker_id: str, lease_s: float, limit: int
    ) -> list[Lease]:
        if self.ledger is None:
            return await self.delivery.reserve(
                queues, worker_id=worker_id, lease_s=lease_s, limit=limit
            )
        now = self.clock.now()
        poll = now >= self._due_check  # ask the store what is due, with the claim
        if poll:
            self._due_check = now + DUE_POLL_S
        due_limit = max(limit, 100)
        leases: list[Lease] = []
        while len(leases) < limit:  # refused copies leave room: fill it from the delivery
            delivered = await self.delivery.reserve(
                queues, worker_id=worker_id, lease_s=lease_s, limit=limit - len(leases)
            )
            if not delivered:
                if poll:  # nothing to claim: ask alone, and take what it made ready
                    poll = False
                    due = await self.ledger.due(queues, limit=due_limit)
                    if due:
                        await self._publish(due)
                        continue
                break
            foreign = [copy for copy in delivered if copy.stamp is None]
            if foreign:  # not the store's copies: record them in it first
                await self._adopt(foreign)
                delivered = [copy for copy in delivered if copy.stamp is not None]
                if not delivered:
                    continue
            claimed, due = await self._claim(
                delivered, worker_id, lease_s, queues if poll else (), due_limit
            )
            poll = False
            await self._publish(due)
            leases += claimed
            if len(claimed) == len(delivered):
                break
        return leases

    async def _claim(
        self,
        delivered: list[Lease],
        worker_id: str,
        lease_s: float,
        due_in: Sequence[str],
        due_limit: int,
    ) -> tuple[list[Lease], list[Outgoing]]:
        """The store's leases of the copies it lets run (the others are dropped), and,
        if `due_in` names queues, the store's due jobs there (`Ledger.claim_due`: one
        store call for both)."""
        assert self.ledger is not None
        try:
            if due_in:
                claimed, due = await self.ledger.claim_due(
                    delivered, due_in, worker_id=worker_id, lease_s=lease_s, limit=due_limit
                )
            else:
                claimed = await self.ledger.claim(delivered, worker_id=worker_id, lease_s=lease_s)
                due = []
        except BaseException:
            # Not claimed, so not ours to run: give the copies back (the delivery
            # would hold them unrun until this process's connection ends).
            with contextlib.suppress(BrokerError):
                await self.delivery.release(delivered)
            raise
        leases: list[Lease] = []
        refused: list[Lease] = []
        for copy, lease in zip(delivered, claimed, strict=True):
            if lease is None:
                refused.append(copy)
            else:
                self._copies[lease.token] = copy
                # The earlier deadline of the two where the delivery's lapses by
                # itself (SQS): the worker must know the copy's (`lapsing_leases`).
                if self.capabilities.lapsing_leases and copy.deadline < lease.deadline:
                    lease = dataclasses.replace(lease, deadline=copy.deadline)
                leases.append(lease)
        if refused:
            await self._drop(refused)
        return leases, due

    async def _adopt(self, messages: Sequence[Lease]) -> None:
        """Record in the store the delivered messages it did not publish (no stamp):
        jobs enqueued while the delivery ran without a state store (RabbitMQ or SQS
        alone, before `state=` was set), or a job put on the queue by hand. `claim`
        refuses an unstamped copy, so they were acknowledged unrun, silently: lost.

        A message that is a job is recorded as a new job (its attempts start again; one
        recorded already, the same id, is not recorded twice), published as the store's
        copy, and only then dropped, so a crash in between delivers it again. A message
        that is not a job is dropped with a warning naming its queue and what is wrong
        with it: there is nothing the store could keep of it."""
        assert self.ledger is not None
        jobs: list[tuple[Envelope, bytes]] = []
        for message in messages:
            try:
                jobs.append((decode_envelope(message.payload), message.payload))
            except msgspec.DecodeError as exc:
                logger.warning(
                    "dropped a message on queue %r that is not an offload job (%s)",
                    message.queue,
                    exc,
                    extra={"action": "foreign_message", "queue": message.queue},
                )
        try:
            if jobs:
                results, outgoing = await self.ledger.record(jobs)
                await self._publish(outgoing)
                for (envelope, _), result in zip(jobs, results, strict=True):
                    if result.created:
                        logger.info(
                            "job %s (%s): delivered without the state store's stamp "
                            "(enqueued without a state store); recorded in the store",
                            envelope.id,
                            envelope.task,
                            extra={"action": "adopted", "job_id": envelope.id},
                        )
        except BaseException:
            with contextlib.suppress(BrokerError):
                await self.delivery.release(messages)
            raise
        await self._drop(messages)

    async def _drop(self, copies: Sequence[Lease]) -> None:
        """Acknowledge copies in the delivery whose outcome the store already holds
        (or that must not run). A failure is harmless: the delivery gives the copy
        out again, and the store refuses it then."""
        try:
            await self.delivery.drop(copies)
        except BrokerError as exc:
            logger.debug("dropping %d copies failed: %s", len(copies), exc)

    async def wait(self, queues: Sequence[str], timeout_s: float) -> None:
        await self.delivery.wait(queues, timeout_s)

    async def wait_for_work(
        self,
        queues: Sequence[str],
        timeout_s: float,
        *,
        worker_id: str,
        lease_s: float,
        limit: int,
    ) -> list[Lease]:
        """Without a state store, the delivery's own (it may hand over what woke it,
        as RabbitMQ's does); with one, `reserve` (which claims in the store), else
        `wait`."""
        if self.ledger is None:
            return await self.delivery.wait_for_work(
                queues, timeout_s, worker_id=worker_id, lease_s=lease_s, limit=limit
            )
        return await super().wait_for_work(
            queues, timeout_s, worker_id=worker_id, lease_s=lease_s, limit=limit
        )

    async def next_due(self, queues: Sequence[str]) -> float | None:
        if self.ledger is None:
            return await self.delivery.next_due(queues)
        due = await self._store_delivery().next_due(queues)  # delays wait in the store
        return None if due is None else max(due, self._due_check)

    async def extend(self, leases: Sequence[Lease], lease_s: float) -> list[bool]:
        if self.ledger is None:
            return await self.delivery.extend(leases, lease_s)
        store = self._store_delivery()
        copies = [self._copies.get(lease.token) for lease in leases]
        held = await self.delivery.extend([c for c in copies if c is not None], lease_s)
        alive = iter(held)
        ours = [copy is not None and next(alive) for copy in copies]
        kept = await store.extend([x for x, ok in zip(leases, ours, strict=True) if ok], lease_s)
        still = iter(kept)
        return [ok and next(still) for ok in ours]

    async def release(self, leases: Sequence[Lease]) -> None:
        if self.ledger is None:
            await self.delivery.release(leases)
            return
        await self._store_delivery().release(leases)
        copies = [c for lease in leases if (c := self._copies.pop(lease.token, None))]
        await self.delivery.release(copies)

    async def settle_many(self, settlements: Sequence[Settlement]) -> list[bool]:
        if self.ledger is None:
            return await self.delivery.settle_many(settlements)
        held = await self._store_delivery().settle_many(settlements)
        if any(item.at is not None for item in settlements):
            self._due_check = 0.0  # a retry or deferral may be due at once
        copies = [c for item in settlements if (c := self._copies.pop(item.lease.token, None))]
        if copies:
            await self._drop(copies)
        return held

    def _store_delivery(self) -> Delivery:
        """The state store's own delivery calls (extend, release, settle_many), which
        it answers for ledger jobs as for its own."""
        assert isinstance(self.ledger, Delivery)
        return self.ledger

    # -- flow --------------------------------------------------------------------------

    async def take_rate(self, key: str, *, limit: int, per_s: float) -> float:
        return await self.flow.take_rate(key, limit=limit, per_s=per_s)

    async def acquire_slot(self, key: str, *, limit: int, holder: str, ttl_s: float) -> bool:
        return await self.flow.acquire_slot(key, limit=limit, holder=holder, ttl_s=ttl_s)

    async def release_slot(self, key: str, holder: str) -> None:
        await self.flow.release_slot(key, holder)

    async def join(
        self, group_id: str, member_id: str, *, index: int, total: int, outcome: bytes
    ) -> list[bytes] | None:
        return await self.flow.join(group_id, member_id, index=index, total=total, outcome=outcome)

    async def compare_and_set(
        self, name: str, expected: str | None, new: str, *, ttl_s: float
    ) -> str | None:
        return await self.flow.compare_and_set(name, expected, new, ttl_s=ttl_s)

    async def outbox(self, limit: int = 500) -> list[Ended]:
        return await self.flow.outbox(limit)

    async def clear_outbox(self, job_ids: Sequence[str]) -> list[str]:
        return await self.flow.clear_outbox(job_ids)

    # -- inspection --------------------------------------------------------------------

    async def counts(self, queues: Sequence[str] | None = None) -> dict[str, QueueStats]:
        return await self.inspection.counts(queues)

    async def finished(self, since: float, queues: Sequence[str] | None = None) -> list[Finished]:
        """The state store's counts: the ends it records (a delivery that settles
        without telling it is not counted)."""
        return await self.inspection.finished(since, queues)

    async def get_job(self, job_id: str) -> JobInfo | None:
        return await self.inspection.get_job(job_id)

    async def find(self, key: str) -> JobInfo | None:
        return await self.inspection.find(key)

    async def list_jobs(
        self,
        *,
        queue: str | None = None,
        state: JobState | None = None,
        limit: int = 50,
        cursor: str | None = None,
        since: float | None = None,
        until: float | None = None,
    ) -> Page:
        return await self.inspection.list_jobs(
            queue=queue, state=state, limit=limit, cursor=cursor, since=since, until=until
        )

    async def workflow_jobs(self, workflow_id: str, *, limit: int = 1000) -> list[JobInfo]:
        return await self.inspection.workflow_jobs(workflow_id, limit=limit)

    async def replay_dead(
        self, queue: str | None = None, job_ids: Sequence[str] | None = None
    ) -> int:
        self._due_check = 0.0  # replayed ledger jobs are published by the next `due`
        return await self.inspection.replay_dead(queue, job_ids)

    async def purge_dead(
        self,
        queue: str | None = None,
        job_ids: Sequence[str] | None = None,
        *,
        older_than: float | None = None,
    ) -> int:
        return await self.inspection.purge_dead(queue, job_ids, older_than=older_than)

    async def queues(self) -> list[str]:
        return await self.inspection.queues()

    async def set_progress(self, job_id: str, progress: bytes) -> None:
        await self.inspection.set_progress(job_id, progress)

    async def record_attempt(self, job_id: str, token: str, record: bytes, *, keep: int) -> None:
        await self.inspection.record_attempt(job_id, token, record, keep=keep)

    async def attempt_records(self, job_id: str) -> tuple[list[bytes], int]:
        return await self.inspection.attempt_records(job_id)

    # -- fleet -------------------------------------------------------------------------

    async def register_worker(self, info: WorkerInfo, ttl_s: float) -> None:
        await self.fleet.register_worker(info, ttl_s)

    async def unregister_worker(self, worker_id: str) -> None:
        await self.fleet.unregister_worker(worker_id)

    async def workers(self) -> list[WorkerInfo]:
        return await self.fleet.workers()

    async def sweep(self) -> SweepReport:
        return await self.fleet.sweep()

    async def set_paused(self, name: str, paused: bool) -> bool:
        return await self.fleet.set_paused(name, paused)

    async def paused(self) -> dict[str, float]:
        return await self.fleet.paused()

    # -- signals -----------------------------------------------------------------------

    async def cancel(self, job_id: str) -> bool:
        return await self.signals.cancel(job_id)

    async def cancel_requested(self, leases: Sequence[Lease]) -> set[str]:
        return await self.signals.cancel_requested(leases)

    async def wait_finished(self, job_id: str, timeout_s: float) -> None:
        await self.signals.wait_finished(job_id, timeout_s)


def with_state_store(delivery: Delivery, store: Broker | None) -> Broker:
    """`delivery` made whole: itself if it already plays every role and no store is
    given, else a `Composite` taking every other role from `store` (which the
    delivery is told of through `Delivery.attach_state`).

    Raises:
        ConfigurationError: `delivery` lacks roles and no store is given (naming the
            setting that gives one), or `store` is not a full broker that keeps a
            `Ledger`.
    """
    if store is None:
        require_roles(delivery, repr(delivery))
        assert isinstance(delivery, Broker)
        return delivery
    if not isinstance(store, Broker):
        raise ConfigurationError(
            f"the state store {store!r} must be a full broker (sqlite, postgresql, redis, "
            f"memory); it lacks {', '.join(r.name.lower() for r in missing_roles(store))}"
        )
    if not isinstance(store, Ledger):
        raise ConfigurationError(
            f"the state store {store!r} cannot keep the jobs of {delivery!r} yet: "
            "use a sqlite:///, postgresql:// or memory:// state store"
        )
    delivery.attach_state(store)
    return Composite(
        delivery, flow=store, inspection=store, fleet=store, signals=store, ledger=store
    )
