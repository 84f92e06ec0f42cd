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
"""

from __future__ import annotations

from collections.abc import Sequence

from offload.brokers.records import (
    Ended,
    EnqueueResult,
    JobInfo,
    Lease,
    Page,
    QueueStats,
    SweepReport,
    WorkerInfo,
)
from offload.brokers.roles import (
    Broker,
    Capabilities,
    Delivery,
    Fleet,
    Flow,
    Inspection,
    Role,
    Settlement,
    Signals,
    roles_of,
)
from offload.envelope import Envelope, JobState
from offload.errors import ConfigurationError

__all__ = ["STATE_URL_SETTING", "Composite", "missing_roles", "with_state_store"]

#: How a user names the state store of a delivery-only broker, quoted in errors.
STATE_URL_SETTING = "state_url (env OFFLOAD_STATE_URL)"


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
            f"set {STATE_URL_SETTING} to a full broker's URL (sqlite, postgresql, redis)"
        )


class Composite(Broker):
    """A `Broker` whose roles are played by other objects (see the module docstring).

    Each role goes to the object given for it; `connect` and `close` reach every
    distinct object once. Capabilities come from the role they are about: the
    delivery's enqueue and wake-ups, the signals' result pushes.
    """

    def __init__(
        self,
        delivery: Delivery,
        *,
        flow: Flow,
        inspection: Inspection,
        fleet: Fleet,
        signals: Signals,
    ) -> None:
        super().__init__(delivery.url, clock=delivery.clock, retention_s=inspection.retention_s)
        self.delivery = delivery
        self.flow = flow
        self.inspection = inspection
        self.fleet = fleet
        self.signals = signals
        parts = [delivery, flow, inspection, fleet, signals]
        self._parts = list({id(part): part for part in parts}.values())
        caps = delivery.capabilities
        self.capabilities = Capabilities(
            transactional_enqueue=caps.transactional_enqueue,
            push_wakeup=caps.push_wakeup,
            push_results=signals.capabilities.push_results,
            blocking_enqueue=caps.blocking_enqueue,
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
        return await self.delivery.enqueue(jobs, max_depth=max_depth)

    def enqueue_blocking(
        self, jobs: Sequence[tuple[Envelope, bytes]], *, max_depth: int | None = None
    ) -> list[EnqueueResult] | None:
        return self.delivery.enqueue_blocking(jobs, max_depth=max_depth)

    async def reserve(
        self, queues: Sequence[str], *, worker_id: str, lease_s: float, limit: int
    ) -> list[Lease]:
        return await self.delivery.reserve(
            queues, worker_id=worker_id, lease_s=lease_s, limit=limit
        )

    async def wait(self, queues: Sequence[str], timeout_s: float) -> None:
        await self.delivery.wait(queues, timeout_s)

    async def next_due(self, queues: Sequence[str]) -> float | None:
        return await self.delivery.next_due(queues)

    async def extend(self, leases: Sequence[Lease], lease_s: float) -> list[bool]:
        return await self.delivery.extend(leases, lease_s)

    async def release(self, leases: Sequence[Lease]) -> None:
        await self.delivery.release(leases)

    async def settle_many(self, settlements: Sequence[Settlement]) -> list[bool]:
        return await self.delivery.settle_many(settlements)

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

    async def clear_outbox(self, job_ids: Sequence[str]) -> None:
        await self.flow.clear_outbox(job_ids)

    # -- inspection --------------------------------------------------------------------

    async def counts(self, queues: Sequence[str] | None = None) -> dict[str, QueueStats]:
        return await self.inspection.counts(queues)

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
    ) -> Page:
        return await self.inspection.list_jobs(queue=queue, state=state, limit=limit, cursor=cursor)

    async def workflow_jobs(self, workflow_id: str, *, limit: int = 1000) -> list[JobInfo]:
        return await self.inspection.workflow_jobs(workflow_id, limit=limit)

    async def replay_dead(
        self, queue: str | None = None, job_ids: Sequence[str] | None = None
    ) -> int:
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
            setting that gives one), or `store` is not a full broker.
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
    delivery.attach_state(store)
    return Composite(delivery, flow=store, inspection=store, fleet=store, signals=store)
