"""The broker contract, in roles: what a broker stores, and how each state change happens.

Brokers are thin and atomic. They store envelopes (bytes from `offload.codec`) beside
the mutable state of each job, and move jobs between states, each move one atomic
operation. Policy (retries, expiry decisions, serialization, logging) lives above them,
in the worker and the app. One conformance suite (`tests/conformance/`) proves every
broker against this contract, role by role.

The contract is cut into five roles, each an ABC a broker inherits to declare it:

    Delivery    enqueue, reserve, wait, next_due, extend, release, settle_many
    Flow        take_rate, acquire_slot/release_slot, join, compare_and_set,
                outbox/clear_outbox
    Inspection  counts, finished, get_job, find, list_jobs, workflow_jobs,
                replay_dead, purge_dead, queues, set_progress, record_attempt,
                attempt_records
    Fleet       register_worker, unregister_worker, workers, sweep, set_paused, paused
    Signals     cancel, cancel_requested, wait_finished

A new capability belongs to one role. `offload.brokers.base.Broker` is all five: the
SQL and Redis brokers and memory are full brokers. A broker that can only deliver
(a message queue) implements `Delivery` and is combined with a full broker, its state
store, for the other four (`offload.brokers.composite`). `wait` is in Delivery, not
Signals: new work is announced by whatever delivers it.

A sixth role, `Ledger` (`offload.brokers.ledger`), is what a full broker needs to be
such a state store: it keeps the state of the jobs another part delivers (recorded
at enqueue, claimed when delivered, settled like its own), and never hands them out
itself.

Every way a lease ends is one `Settlement` (a record, in `offload.brokers.records`)
passed to `Delivery.settle_many`, in batches: the worker group-commits all of them
(`offload.worker.settler`). What every role shares (URL, clock, lifecycle,
`Capabilities`) is `Part`, in `offload.brokers.part`.

Lifecycle of a job, by broker operation:

    enqueue ──► scheduled ──(due)──► queued ──reserve──► running ──ack────► succeeded
                    ▲                  ▲                    │ ──bury───► dead ──replay──► queued
                    └──────retry───────┼────────────────────┘ ──release─► queued
                                       └──(lease lapsed)────┘
    queued/scheduled ──(expires_at passed)──► expired      queued/scheduled ──cancel──► cancelled
    running ──cancel──► flagged ──(the worker stops it: settlement `cancel`)──► cancelled
    running ──defer──► scheduled (the attempt not counted: held back by a flow limit)

(ack, retry, bury, defer and cancel-while-running are the five `Ending`s of a
`Settlement`.) All times are Unix epoch seconds read from the broker's injected `clock`.
"""

from __future__ import annotations

import abc
import asyncio
import contextlib
import enum
from collections.abc import Awaitable, Sequence
from typing import TYPE_CHECKING, final

from offload.brokers.ledger import PUBLISH_GRACE_S, Ledger
from offload.brokers.part import Capabilities, Part, TransactionalEnqueue
from offload.brokers.records import (
    DEFAULT_RETENTION_S,
    Ended,
    Ending,
    EnqueueResult,
    Finished,
    JobInfo,
    Lease,
    Outcome,
    Outgoing,
    Page,
    QueueStats,
    Settlement,
    SweepReport,
    WorkerInfo,
)
from offload.envelope import Envelope, ErrorInfo, JobState
from offload.errors import ConfigurationError, LeaseLost

if TYPE_CHECKING:
    from offload.brokers.facts import QueueFacts

#: The roles, and what they share and take and return (re-exported from
#: `offload.brokers.part`, `offload.brokers.ledger` and `offload.brokers.records`, so
#: one import gives the whole contract).
__all__ = [
    "DEFAULT_RETENTION_S",
    "Broker",
    "Capabilities",
    "Delivery",
    "Ended",
    "Ending",
    "EnqueueResult",
    "Finished",
    "Fleet",
    "Flow",
    "Inspection",
    "JobInfo",
    "Lease",
    "Ledger",
    "Outgoing",
    "PUBLISH_GRACE_S",
    "Outcome",
    "Page",
    "Part",
    "QueueStats",
    "Role",
    "Settlement",
    "Signals",
    "SweepReport",
    "TransactionalEnqueue",
    "WorkerInfo",
    "roles_of",
]


class Delivery(Part):
    """Getting jobs to workers: store, lease, heartbeat, give back and settle.

    The one role a message queue can play alone. Methods may be called concurrently
    from several tasks of one event loop, and (for `cross_process` brokers) from
    several processes. A call cancelled while in flight may still take effect (a
    cancelled `reserve` can leave its jobs leased until the lease lapses); nothing is
    lost either way.
    """

    @abc.abstractmethod
    async def enqueue(
        self, jobs: Sequence[tuple[Envelope, bytes]], *, max_depth: int | None = None
    ) -> list[EnqueueResult]:
        """Store jobs in one atomic operation, as `scheduled` if `not_before` is in the
        future, else `queued`.

        Each item is an envelope with its encoded bytes (encoded once, by the caller).
        A job whose `key` matches an existing job's (in any state, until that job is
        purged) is not stored; its result carries the existing id and `created=False`.
        Duplicate keys within one call resolve to the first. An envelope whose `id` is
        already stored (a retried send) is likewise not stored again.

        `max_depth` (backpressure): if a queue's active jobs (`queued` + `scheduled`)
        plus the call's jobs for that queue (duplicates included) would exceed it,
        nothing of the call is stored. The count and the insert are one atomic step
        (PostgreSQL: under a per-queue advisory lock taken by every bounded enqueue).

        Raises:
            QueueFull: `max_depth` would be exceeded.
        """

    def enqueue_blocking(
        self, jobs: Sequence[tuple[Envelope, bytes]], *, max_depth: int | None = None
    ) -> list[EnqueueResult] | None:
        """`enqueue`, blocking the calling thread (which runs no event loop), for brokers
        with `capabilities.blocking_enqueue`; same contract and errors. None when the
        broker leaves this call to `enqueue` (the caller then uses it): a fast path
        for the common case, not a second implementation of every case."""
        return None

    @abc.abstractmethod
    async def reserve(
        self, queues: Sequence[str], *, worker_id: str, lease_s: float, limit: int
    ) -> list[Lease]:
        """Lease up to `limit` ready jobs from `queues`, atomically.

        First, due `scheduled` jobs become `queued`, `running` jobs whose lease has
        lapsed become `queued` again (error `LeaseExpired`), and `queued`/`scheduled`
        jobs past `expires_at` become `expired`. Then jobs are taken by priority
        (higher first), then due time, then enqueue order, marked `running` with a new
        token and `deadline = now + lease_s`, and their `attempt` is incremented.
        Returns an empty list when nothing is ready; never blocks.
        """

    async def wait(self, queues: Sequence[str], timeout_s: float) -> None:
        """Return when work may be ready in `queues`, or after `timeout_s`.

        May return early spuriously. The base implementation just sleeps; brokers with
        `push_wakeup` return as soon as a job is enqueued (Redis: the first job since
        the queue's last reservation, which is then due; the reservation that wake-up
        leads to takes the later ones as well).
        """
        await asyncio.sleep(timeout_s)

    async def wait_for_work(
        self,
        queues: Sequence[str],
        timeout_s: float,
        *,
        worker_id: str,
        lease_s: float,
        limit: int,
    ) -> list[Lease]:
        """The worker's fetch: `reserve`, and if nothing is ready, `wait` until work
        may be ready, the next delayed job is due (`next_due`) or `timeout_s` passed,
        then return nothing (the caller reserves again).

        A broker may instead hand the waiting worker up to `limit` jobs the moment they
        are enqueued, leased to `worker_id` as `reserve` leases them, and return them.
        Its next `reserve` or `wait_for_work` for `worker_id` ends the handing and
        returns with its own leases what was handed and not yet returned; a cancelled
        call gives back at once what it was handed."""
        reserve = self.reserve(queues, worker_id=worker_id, lease_s=lease_s, limit=limit)
        if leases := await self._given_back_if_cancelled(reserve):
            return leases
        due = await self.next_due(queues)
        _raise_if_cancelled()
        if due is not None:
            timeout_s = min(timeout_s, max(due - self.clock.now(), 0.0))
        await self.wait(queues, timeout_s)
        return []

    async def _given_back_if_cancelled(self, leasing: Awaitable[list[Lease]]) -> list[Lease]:
        """Await `leasing` (a call that leases jobs); if the caller is cancelled
        meanwhile, the call still completes and its leases are released at once,
        instead of lapsing after the lease time."""
        task = asyncio.ensure_future(leasing)
        try:
            return await asyncio.shield(task)
        except asyncio.CancelledError:
            with contextlib.suppress(Exception):
                await self.release(await task)
            raise

    @abc.abstractmethod
    async def next_due(self, queues: Sequence[str]) -> float | None:
        """The earliest due time of a `scheduled` job in `queues`, None if there is none.

        An idle worker sleeps until then at most, so a delayed job or a retry starts
        on time without polling.
        """

    @abc.abstractmethod
    async def extend(self, leases: Sequence[Lease], lease_s: float) -> list[bool]:
        """Push each lease's deadline to `now + lease_s`. False: the lease is not ours
        any more (its token no longer matches: it lapsed and a `reserve` took the job
        back, or it was finished). A lease past its deadline that nobody took back is
        still ours and is extended, as `settle_many` accepts it: a worker cut off from
        the broker for longer than its lease learns, once back, whether anyone else may
        have the job, and is not told so when nobody has. (Except on a broker with
        `capabilities.lapsing_leases`: there a lease past its deadline is never ours.)"""

    @abc.abstractmethod
    async def release(self, leases: Sequence[Lease]) -> None:
        """`running → queued` at once, without counting the attempt: give back work
        that was reserved but not run (shutdown). Leases no longer ours are ignored."""

    @abc.abstractmethod
    async def settle_many(self, settlements: Sequence[Settlement]) -> list[bool]:
        """End each lease as its settlement says (see `Ending`), in one round trip
        where the broker can: the worker group-commits every outcome through this.

        Each settlement is atomic and stands alone: True if recorded, False if its
        lease is no longer held (the token does not match the job's current lease: a
        `reserve` took the job back, or it was settled already), and the others still
        take effect. A lease past its deadline that no `reserve` has taken back is
        still held: the work is done and nobody else has the job (not so with
        `capabilities.lapsing_leases`: past its deadline a lease is lost). The worker never
        puts two settlements of one lease in a call.
        """

    # -- one settlement at a time: shorthands over `settle_many`, never overridden ----

    @final
    async def settle(self, settlement: Settlement) -> None:
        """Record one settlement.

        Raises:
            LeaseLost: the token does not match the job's current lease.
        """
        [held] = await self.settle_many([settlement])
        if not held:
            raise LeaseLost()

    @final
    async def ack(self, lease: Lease, result: bytes | None, *, result_ttl_s: float | None) -> None:
        """`settle(Settlement.ack(...))`: `running → succeeded`."""
        await self.settle(Settlement.ack(lease, result, result_ttl_s=result_ttl_s))

    @final
    async def retry(self, lease: Lease, *, at: float, error: ErrorInfo) -> None:
        """`settle(Settlement.retry(...))`: `running → scheduled`, attempt counted."""
        await self.settle(Settlement.retry(lease, at=at, error=error))

    @final
    async def bury(self, lease: Lease, *, error: ErrorInfo) -> None:
        """`settle(Settlement.bury(...))`: `running → dead`."""
        await self.settle(Settlement.bury(lease, error=error))

    @final
    async def defer(self, lease: Lease, *, at: float) -> None:
        """`settle(Settlement.defer(...))`: `running → scheduled`, attempt not counted."""
        await self.settle(Settlement.defer(lease, at=at))

    @final
    async def cancel_running(self, lease: Lease, *, error: ErrorInfo) -> None:
        """`settle(Settlement.cancel(...))`: `running → cancelled`."""
        await self.settle(Settlement.cancel(lease, error=error))

    async def publish(self, jobs: Sequence[Outgoing]) -> None:
        """Put each job on its queue, due now, carrying its `stamp` (returned in the
        `Lease.stamp` of its deliveries); return once the delivery holds every one.

        Only a delivery working for a state store is asked this (`Composite`): the
        store's `Ledger` has decided keys, depth limits and due times, and decides at
        `reserve` which delivered copy may run, so this call checks nothing. Not atomic
        across jobs; the store publishes again what was not confirmed.

        Raises:
            BrokerUnavailable: not every job is known to be held (the store then
                publishes them again after `PUBLISH_GRACE_S`).
            ConfigurationError: this delivery cannot work for a state store.
        """
        raise ConfigurationError(f"{self!r} cannot deliver jobs for a state store")

    def check_publish(self, jobs: Sequence[tuple[Envelope, bytes]]) -> None:
        """Refuse, before a state store records anything, a job this delivery could
        never `publish` (a message too big for it): `Composite.enqueue` asks first, so
        that an enqueue that raises has stored nothing, and the store keeps no job
        whose every publish fails. Nothing to refuse by default.

        Raises:
            SerializationError: naming the job (nothing is recorded or sent).
        """

    async def drop(self, copies: Sequence[Lease]) -> None:
        """End copies whose fate the state store holds (settled there, or refused by
        its `claim`): acknowledge them, with no result and nothing more to wait for
        (a copy whose acknowledgement is lost comes back, and the store refuses it).
        Asked by `Composite` only; copies no longer held are ignored.

        Raises:
            BrokerError: the delivery failed (harmless, as a lost acknowledgement).
        """
        await self.settle_many([Settlement.ack(copy, None) for copy in copies])

    def state_url(self) -> str | None:
        """The state store this delivery's own URL names (e.g. `?state=` of an
        `amqp://` URL), None if it names none: `from_url` uses it when not given one."""
        return None

    def facts(self) -> QueueFacts | None:
        """What this delivery can answer about its queues without a state store (see
        `offload.brokers.stateless`), or None: it cannot run without one. Full
        brokers never need it."""
        return None

    def attach_state(self, state: Broker) -> None:
        """Called once by `Composite` with the full broker that keeps this delivery's
        state, before `connect`: a delivery-only broker that must tell the state store
        something (its jobs, for inspection and cancels) keeps it and talks to it
        through its public roles. Full brokers ignore it."""


class Flow(Part):
    """Coordination between workers: rate limits, concurrency slots, chord joins,
    registers, and the outbox of jobs that ended inside the broker."""

    @abc.abstractmethod
    async def take_rate(self, key: str, *, limit: int, per_s: float) -> float:
        """Take one token of the rate limit `key`: at most `limit` per `per_s` seconds,
        shared by every process using this broker. 0.0 if a token was taken, else the
        seconds until one is free (nothing is taken then).

        A GCRA (a token bucket of capacity `limit` refilled at `limit / per_s` per
        second, stored as one number per key): an idle key allows a burst of `limit` at
        once, then one token every `per_s / limit` seconds. Atomic; times come from the
        broker's clock. A limit's state lives apart from jobs and lapses on its own
        once idle.
        """

    @abc.abstractmethod
    async def acquire_slot(self, key: str, *, limit: int, holder: str, ttl_s: float) -> bool:
        """Take one of the `limit` slots of the concurrency limit `key` for `holder`,
        until `release_slot` or `ttl_s` seconds from now (so a crashed holder's slot
        frees itself). True if taken, or if `holder` already held one: its TTL is then
        renewed (the worker's heartbeat calls this again). Atomic; slots past their
        TTL are not counted.
        """

    @abc.abstractmethod
    async def release_slot(self, key: str, holder: str) -> None:
        """Free `holder`'s slot of `key`; nothing if it holds none. Idempotent."""

    @abc.abstractmethod
    async def join(
        self, group_id: str, member_id: str, *, index: int, total: int, outcome: bytes
    ) -> list[bytes] | None:
        """Record that member `member_id` (number `index`, from 0, of `total`) of the
        chord `group_id` is terminal, with `outcome` (opaque bytes: the worker stores
        the encoded result). Atomic and idempotent: a member recorded again (a
        redelivery, a replay) keeps its first outcome.

        Returns every member's outcome in `index` order once `total` distinct members
        are recorded (by this call or an earlier one), else None. The worker enqueues
        the chord's callback under a fixed key whenever it gets the outcomes, so a
        crash after this call and before the callback's enqueue is repaired by the
        member's rerun. A group's record lapses with the broker's retention.
        """

    @abc.abstractmethod
    async def compare_and_set(
        self, name: str, expected: str | None, new: str, *, ttl_s: float
    ) -> str | None:
        """Set the register `name` to `new` for `ttl_s` seconds if it holds `expected`
        (None: it is unset, or its TTL has passed) or already holds `new` (its TTL is
        then renewed). Returns what it holds after the call: `new` if set, else its
        current value (None if unset). Atomic: of several calls that expect the same
        value, one sets it and the others get that call's `new`.

        The scheduler keeps each schedule's current fire here, so that a new fire is
        decided by the broker, not by a replica's memory (`offload.scheduler`).
        Registers live apart from jobs and lapse on their own (`sweep` forgets them).
        """

    @abc.abstractmethod
    async def outbox(self, limit: int = 500) -> list[Ended]:
        """Jobs that became terminal without a worker, oldest first, until
        `clear_outbox`: `cancelled` by `cancel` while `queued`/`scheduled`, or
        `expired` (by `reserve` or `sweep`).

        A workflow must hear of every member's end, and metrics count every such end
        (`offload_jobs_finished_total`), yet these ends happen inside the broker, where
        no worker sees them (`offload.workflow_engine`): so the broker records each one
        in the same atomic step as the state change, and a worker runs the follow-ups,
        clears the entry and reports the end to its hooks (`Hook.on_ended`). Every job
        that ends so is recorded (jobs that were already waiting when a broker of an
        older version was upgraded may be recorded only if they have `then` or
        `chord`). An entry whose job was purged is not returned. Read-only: several
        readers may get the same entries.
        """

    @abc.abstractmethod
    async def clear_outbox(self, job_ids: Sequence[str]) -> list[str]:
        """Forget these outbox entries (their follow-ups are done). Returns the ids
        whose entries this call removed: of several calls for one entry, at once or
        not, exactly one gets its id, so each end is reported once across a fleet.
        Idempotent (ids with no entry are ignored)."""


class Inspection(Part):
    """Reading jobs for people and tools (CLI, dashboard, `Job` handles), the
    dead-letter queue's replay and purge, and a job's progress."""

    @abc.abstractmethod
    async def counts(self, queues: Sequence[str] | None = None) -> dict[str, QueueStats]:
        """Per queue (all known queues if None): jobs per state, oldest queued job."""

    @abc.abstractmethod
    async def finished(self, since: float, queues: Sequence[str] | None = None) -> list[Finished]:
        """How many jobs ended per queue (all if None), minute and `Outcome`, from the
        minute holding `since` on, sorted by queue, minute and outcome; minutes in which
        nothing ended are left out. One read, however many jobs ended.

        Brokers count each end in the same atomic step as the end itself, by their
        clock's minute: every settlement but a defer (`Ending.outcome`), `cancel` of a
        waiting job (cancelled) and an expiry by `reserve` or `sweep` (expired). `sweep`
        drops the minutes older than `FINISHED_KEEP_S`, so a `since` further back
        gets what is left of them (nothing, once a sweep has run).
        """

    @abc.abstractmethod
    async def get_job(self, job_id: str) -> JobInfo | None:
        """One job by id, None if unknown or purged."""

    @abc.abstractmethod
    async def find(self, key: str) -> JobInfo | None:
        """One job by its idempotency key."""

    @abc.abstractmethod
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
        """Jobs newest first, filtered by queue, state and creation time (`created_at`
        within `since` and `until`, both included), with keyset pagination (a cursor
        belongs to the filters it was made with).

        Newest first is enqueue order; with a time range it is creation order
        (`created_at`, then enqueue order; Redis orders jobs created within the same
        millisecond by enqueue order alone), read from each broker's index of creation
        times, so that a range deep in a million jobs is a seek."""

    @abc.abstractmethod
    async def workflow_jobs(self, workflow_id: str, *, limit: int = 1000) -> list[JobInfo]:
        """The jobs of one workflow (those whose envelope's `workflow_id` is
        `workflow_id`), in enqueue order, at most `limit`; empty for an unknown id.
        For `offload show`: read-only, and it may scan (SQL brokers scan the jobs
        enqueued since the workflow's id was made; Redis keeps one index set per
        workflow, hash-tagged by its id, that lapses with the broker's retention).
        """

    @abc.abstractmethod
    async def replay_dead(
        self, queue: str | None = None, job_ids: Sequence[str] | None = None
    ) -> int:
        """Move dead jobs (all, or of `queue`, or those in `job_ids`) back to `queued`
        with their attempt count reset. Returns how many moved."""

    @abc.abstractmethod
    async def purge_dead(
        self,
        queue: str | None = None,
        job_ids: Sequence[str] | None = None,
        *,
        older_than: float | None = None,
    ) -> int:
        """Delete dead jobs (all, or of `queue`, or in `job_ids`, and finished more than
        `older_than` seconds ago if given). Returns how many were deleted."""

    @abc.abstractmethod
    async def queues(self) -> list[str]:
        """Every queue that holds or held a job, sorted."""

    @abc.abstractmethod
    async def set_progress(self, job_id: str, progress: bytes) -> None:
        """Store a job's progress (encoded JSON, from its handler), replacing the last
        one. `get_job` returns it decoded in `JobInfo.progress` (other listings leave
        it None) until the job is purged. Last write wins; no state check (a late
        report of a finished job is harmless)."""

    @abc.abstractmethod
    async def record_attempt(self, job_id: str, token: str, record: bytes, *, keep: int) -> None:
        """Append `record` (an encoded `offload.attempts.Attempt`) to the job's attempt
        history, keeping the newest `keep` records and counting the others as dropped.
        Idempotent per `token` (the lease's): a record whose token is already the
        newest is not added again (a settle retried through an outage). No state check.
        The history goes when the job is purged (Redis: it lapses with the retention)."""

    @abc.abstractmethod
    async def attempt_records(self, job_id: str) -> tuple[list[bytes], int]:
        """The job's attempt records, oldest first, and how many older ones were
        dropped; `([], 0)` for a job without any."""


class Fleet(Part):
    """The workers: who is alive, and the housekeeping every one of them runs."""

    @abc.abstractmethod
    async def register_worker(self, info: WorkerInfo, ttl_s: float) -> None:
        """Record (or refresh) a live worker; it vanishes `ttl_s` after its last refresh."""

    @abc.abstractmethod
    async def unregister_worker(self, worker_id: str) -> None:
        """Forget a worker at clean shutdown."""

    @abc.abstractmethod
    async def workers(self) -> list[WorkerInfo]:
        """Workers whose registration has not lapsed."""

    @abc.abstractmethod
    async def sweep(self) -> SweepReport:
        """Housekeeping, idempotent and safe to run from every worker at once: expire
        `queued`/`scheduled` jobs past `expires_at`, delete finished jobs past their
        result TTL or retention (dead jobs are kept until purged), forget lapsed
        workers."""

    @abc.abstractmethod
    async def set_paused(self, name: str, paused: bool) -> bool:
        """Durably raise (`paused`) or lower the pause flag `name` (`queue:<q>`,
        `schedule:<id>`: see `offload.pausing`), for every process of the broker, until
        changed again. True if it changed. A flag raised again keeps its first time."""

    @abc.abstractmethod
    async def paused(self) -> dict[str, float]:
        """Every raised pause flag, with the time it was raised. Read-only and cheap:
        workers ask about twice a second."""


class Signals(Part):
    """Telling jobs and their waiters about each other: a cancel request reaches the
    worker running the job, and a job's end reaches whoever waits for its result."""

    @abc.abstractmethod
    async def cancel(self, job_id: str) -> bool:
        """Cancel a `queued` or `scheduled` job (it will never run), or flag a `running`
        one for cooperative cancellation. False if the job is unknown or finished."""

    @abc.abstractmethod
    async def cancel_requested(self, leases: Sequence[Lease]) -> set[str]:
        """The ids of the jobs among `leases` that are `running` and flagged by
        `cancel`. The worker asks this for its running jobs about twice a second, so
        an async job sees a cancel within a second. Read-only."""

    async def wait_finished(self, job_id: str, timeout_s: float) -> None:
        """Return once `job_id` may be terminal (or unknown), or after `timeout_s`.

        May return early spuriously; the caller reads the job again. Brokers register
        their interest before they look at the job, so an end between the look and the
        wait is never missed. The base implementation just sleeps (the caller passes a
        backoff); brokers with `push_results` return as soon as the job ends anywhere.
        """
        await asyncio.sleep(timeout_s)


class Role(enum.Enum):
    """The five roles, each naming its ABC (`Role.FLOW.part is Flow`)."""

    DELIVERY = Delivery
    FLOW = Flow
    INSPECTION = Inspection
    FLEET = Fleet
    SIGNALS = Signals

    @property
    def part(self) -> type[Part]:
        return self.value  # type: ignore[no-any-return]


class Broker(Delivery, Flow, Inspection, Fleet, Signals):
    """A full broker: every role. Memory, SQLite, PostgreSQL and Redis are full
    brokers, and so is a `Composite` of a delivery and a state store. Code that needs
    the whole contract (the worker, the app, the CLI) takes a `Broker`; code that
    needs one role takes that role.

    Subclasses implement every abstract method of the roles as one atomic operation
    (a transaction, a Lua script, a lock-held update).
    """


def roles_of(obj: object) -> frozenset[Role]:
    """The roles `obj` declares, by inheriting their ABCs."""
    return frozenset(role for role in Role if isinstance(obj, role.part))


def _raise_if_cancelled() -> None:
    """Raise the cancellation of the current task if one was asked for and swallowed
    on the way: psycopg 3.2.1 (with psycopg-pool 3.2.6) can return a query's rows when a
    cancel lands as the query ends, and a worker stopped then went on to sleep in its
    idle wait for the whole poll interval (one run in ten of
    `test_uncommitted_job_is_invisible_then_commit_wakes_the_worker` at those versions)."""
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError
