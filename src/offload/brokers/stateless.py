"""A delivery-only broker without a state store: what it answers alone, and a clear
refusal of the rest.

A message queue (`amqp://`, `sqs://`) delivers jobs, retries them through its own
delays and parks dead ones, but cannot look a job up, hold a result, a key or a limit.
Without a state store (`state=` in its URL, `state_url=`, `OFFLOAD_STATE_URL`),
`from_url` makes the delivery a whole broker (`alone`) whose other roles are a
`Stateless`:

- answered from the queue itself (`QueueFacts`, given by `Delivery.facts()`):
  `counts` (what the server can count), `queues`, `replay_dead` and `purge_dead`;
- answered because nothing can be there: `outbox` (no job ends inside the queue with a
  workflow waiting on it), `cancel_requested` (no cancel could be recorded), `sweep`
  (nothing to expire or purge), `paused` (no flag can be raised), worker registration
  and attempt records (kept nowhere: `workers` and `attempt_records` refuse),
  `finished` (no end is counted);
- refused with a `ConfigurationError` naming the setting (`NEEDS_STATE`): job lookup
  and listing (`get_job`, `find`, `list_jobs`, `workflow_jobs`: so `Job.result()`,
  `state()`, `info()`), `cancel`, `set_progress`, `workers`, rate and concurrency
  limits, chord joins, pausing, and the registers the scheduler keeps its fires in.
  The delivery's own `enqueue` refuses keys, `max_depth` and workflow steps the same
  way (`offload.brokers.facts.QueueFacts.check_enqueue`), before sending anything.
"""

from __future__ import annotations

from collections.abc import Sequence

from offload.brokers.composite import Composite
from offload.brokers.facts import QueueFacts
from offload.brokers.records import (
    Ended,
    Finished,
    JobInfo,
    Lease,
    Page,
    QueueStats,
    SweepReport,
    WorkerInfo,
)
from offload.brokers.roles import Broker, Delivery, Fleet, Flow, Inspection, Signals
from offload.envelope import JobState

__all__ = ["NEEDS_STATE", "Stateless", "alone"]

#: What a delivery-only broker without a state store refuses (the rest works).
NEEDS_STATE = (
    "idempotency keys",
    "max_depth",
    "results and job lookup (get_job, find, list_jobs, workflow_jobs)",
    "cancel",
    "progress",
    "the worker registry (workers)",
    "rate and concurrency limits",
    "chords (join)",
    "schedules (compare_and_set)",
    "pausing (set_paused)",
    "attempt history (attempt_records)",
)


def alone(delivery: Delivery, facts: QueueFacts) -> Broker:
    """`delivery` as a whole broker without a state store (module docstring)."""
    stateless = Stateless(delivery, facts)
    return Composite(
        delivery, flow=stateless, inspection=stateless, fleet=stateless, signals=stateless
    )


class Stateless(Flow, Inspection, Fleet, Signals):
    """The non-delivery roles of a delivery-only broker without a state store (module
    docstring)."""

    def __init__(self, delivery: Delivery, facts: QueueFacts) -> None:
        super().__init__(delivery.url, clock=delivery.clock)
        self._facts = facts
        self._refuse = facts.needs_state

    # -- answered from the queue -------------------------------------------------------

    async def counts(self, queues: Sequence[str] | None = None) -> dict[str, QueueStats]:
        names = queues if queues is not None else await self.queues()
        return {queue: await self._facts.stats(queue) for queue in names}

    async def queues(self) -> list[str]:
        return await self._facts.names()

    async def replay_dead(
        self, queue: str | None = None, job_ids: Sequence[str] | None = None
    ) -> int:
        names = await self._every("replaying dead jobs", queue)
        return sum([await self._facts.replay_dead(name, job_ids) for name in names])

    async def purge_dead(
        self,
        queue: str | None = None,
        job_ids: Sequence[str] | None = None,
        *,
        older_than: float | None = None,
    ) -> int:
        if older_than is not None:
            raise self._refuse("purge_dead(older_than=...) (when each job died)")
        names = await self._every("purging dead jobs", queue)
        return sum([await self._facts.purge_dead(name, job_ids) for name in names])

    async def _every(self, what: str, queue: str | None) -> list[str]:
        """`[queue]`, or every queue where the server can list them (else a refusal: a
        sweep of only the queues this process happened to use would report 0 for dead
        jobs it never looked at)."""
        if queue is not None:
            return [queue]
        if not self._facts.lists_queues:
            raise self._facts.unlisted(what)
        return await self.queues()

    # -- nothing there to answer -------------------------------------------------------

    async def outbox(self, limit: int = 500) -> list[Ended]:
        return []

    async def clear_outbox(self, job_ids: Sequence[str]) -> list[str]:
        return []

    async def cancel_requested(self, leases: Sequence[Lease]) -> set[str]:
        return set()

    async def sweep(self) -> SweepReport:
        return SweepReport()

    async def register_worker(self, info: WorkerInfo, ttl_s: float) -> None:
        return None

    async def unregister_worker(self, worker_id: str) -> None:
        return None

    async def record_attempt(self, job_id: str, token: str, record: bytes, *, keep: int) -> None:
        return None  # kept nowhere: `attempt_records` refuses

    async def paused(self) -> dict[str, float]:
        return {}  # no flag can be raised: `set_paused` refuses

    # -- refused -----------------------------------------------------------------------

    async def workers(self) -> list[WorkerInfo]:
        raise self._refuse("the worker registry")

    async def attempt_records(self, job_id: str) -> tuple[list[bytes], int]:
        raise self._refuse("a job's attempt history")

    async def set_paused(self, name: str, paused: bool) -> bool:
        raise self._refuse("pausing")

    async def get_job(self, job_id: str) -> JobInfo | None:
        raise self._refuse("looking a job up (its state and result)")

    async def find(self, key: str) -> JobInfo | None:
        raise self._refuse("finding a job by its key")

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
        raise self._refuse("listing jobs")

    async def finished(self, since: float, queues: Sequence[str] | None = None) -> list[Finished]:
        """Nothing: no end is counted (the overview shows no throughput)."""
        return []

    async def workflow_jobs(self, workflow_id: str, *, limit: int = 1000) -> list[JobInfo]:
        raise self._refuse("listing a workflow's jobs")

    async def set_progress(self, job_id: str, progress: bytes) -> None:
        raise self._refuse("progress")

    async def cancel(self, job_id: str) -> bool:
        raise self._refuse("cancel")

    async def take_rate(self, key: str, *, limit: int, per_s: float) -> float:
        raise self._refuse("a rate limit")

    async def acquire_slot(self, key: str, *, limit: int, holder: str, ttl_s: float) -> bool:
        raise self._refuse("a concurrency limit")

    async def release_slot(self, key: str, holder: str) -> None:
        raise self._refuse("a concurrency limit")

    async def join(
        self, group_id: str, member_id: str, *, index: int, total: int, outcome: bytes
    ) -> list[bytes] | None:
        raise self._refuse("a chord (its join)")

    async def compare_and_set(
        self, name: str, expected: str | None, new: str, *, ttl_s: float
    ) -> str | None:
        raise self._refuse("a schedule (its fire register)")
