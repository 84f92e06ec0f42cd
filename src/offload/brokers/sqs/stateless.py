"""What `sqs://` can answer without a state store, and the clear refusal of the rest.

`open_broker` makes an `sqs://` URL a whole `Broker`: SQS's delivery role, and the
other roles from the state store that `state=` names. Without `state=` those roles
come from `Stateless`, which answers what SQS itself knows and refuses the rest with a
`ConfigurationError` naming the `state=` setting (listed in `NEEDS_STATE`):

- answered from SQS: `counts` (SQS's approximate numbers: ready, leased, delayed,
  dead), `queues`, `replay_dead` and `purge_dead` (the dead-letter queues);
- answered because nothing can be there: `outbox` (no job ends inside SQS with a
  workflow waiting on it), `cancel_requested` (no cancel could be recorded), `sweep`
  (nothing to expire or purge), `paused` (no flag can be raised), worker registration
  and attempt records (kept nowhere: `workers` and `attempt_records` refuse);
- refused: job lookup and listing (`get_job`, `find`, `list_jobs`, `workflow_jobs`:
  so `Job.result()`, `state()`, `info()`), `cancel`, `set_progress`, `workers`, rate and
  concurrency limits, chord joins, pausing, and the registers the scheduler keeps its
  fires in.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

from offload.brokers.composite import Composite, with_state_store
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
from offload.brokers.roles import Broker, Fleet, Flow, Inspection, Signals
from offload.brokers.sqs.broker import SQSBroker
from offload.envelope import JobState

__all__ = ["NEEDS_STATE", "Stateless", "open_broker"]

#: What an `sqs://` broker without a state store refuses (the rest works).
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


class Stateless(Flow, Inspection, Fleet, Signals):
    """The non-delivery roles of an `sqs://` broker without `state=` (module docstring)."""

    def __init__(self, delivery: SQSBroker) -> None:
        super().__init__(delivery.url, clock=delivery.clock)
        self._sqs = delivery.sqs
        self._refuse = delivery.needs_state

    # -- answered from SQS -------------------------------------------------------------

    async def counts(self, queues: Sequence[str] | None = None) -> dict[str, QueueStats]:
        """SQS's approximate counts: ready as queued, leased as running, delayed as
        scheduled, the dead-letter queue as dead (retries wait as delayed too)."""
        out = {}
        for queue in queues if queues is not None else await self.queues():
            depth = await self._sqs.depth(queue)
            out[queue] = QueueStats(
                {
                    JobState.QUEUED: depth["ready"],
                    JobState.RUNNING: depth["leased"],
                    JobState.SCHEDULED: depth["delayed"],
                    JobState.DEAD: depth["dead"],
                }
            )
        return out

    async def queues(self) -> list[str]:
        return await self._sqs.topology.listed()

    async def replay_dead(
        self, queue: str | None = None, job_ids: Sequence[str] | None = None
    ) -> int:
        names = [queue] if queue is not None else await self.queues()
        return sum([await self._sqs.replay_dead(name, job_ids) for name in names])

    async def purge_dead(
        self,
        queue: str | None = None,
        job_ids: Sequence[str] | None = None,
        *,
        older_than: float | None = None,
    ) -> int:
        if older_than is not None:
            raise self._refuse("purge_dead(older_than=...) (when each job died)")
        names = [queue] if queue is not None else await self.queues()
        return sum([await self._sqs.purge_dead(name, job_ids) for name in names])

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
        """Nothing: SQS counts no ends (the overview shows no throughput)."""
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


def open_broker(url: str, *, state_url: str | None = None, **kwargs: Any) -> Broker:
    """The whole broker an `sqs://` URL names (not yet connected): SQS for delivery,
    and for the rest the state store named by `state_url`, else the URL's `state=`,
    else `OFFLOAD_STATE_URL` (the order of `from_url`, which calls this), or
    `Stateless` when none is set. `kwargs` (`clock`, `retention_s`) go to both.

    Raises:
        ConfigurationError: a bad URL (the SQS one or the store's), or a state store
            that cannot keep SQS's jobs (`with_state_store`).
    """
    from offload.brokers import from_url

    delivery = SQSBroker(url, **kwargs)
    store_url = state_url or delivery.state_url() or os.environ.get("OFFLOAD_STATE_URL")
    if store_url:
        return with_state_store(delivery, from_url(store_url, **kwargs))
    stateless = Stateless(delivery)
    return Composite(
        delivery, flow=stateless, inspection=stateless, fleet=stateless, signals=stateless
    )
