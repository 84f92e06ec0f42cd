"""The values brokers take and return: leases, job records, pages, counts, workers.

Plain frozen dataclasses shared by every broker role (`offload.brokers.roles`), so a
broker's answers look the same whichever broker gives them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from offload.attempts import Attempt
from offload.codec import decode_envelope, decode_value
from offload.envelope import Envelope, ErrorInfo, JobState

__all__ = [
    "DEFAULT_RETENTION_S",
    "LEASE_EXPIRED",
    "Ended",
    "EnqueueResult",
    "JobInfo",
    "Lease",
    "Outgoing",
    "Page",
    "QueueStats",
    "SweepReport",
    "WorkerInfo",
]

#: The error every broker records on a job whose lease lapsed (the same words everywhere).
LEASE_EXPIRED = ErrorInfo("LeaseExpired", "the lease lapsed: the worker died or stalled")

#: How long expired and cancelled jobs (and succeeded jobs with no result TTL) are
#: kept for inspection before `sweep` deletes them: 7 days, in seconds.
DEFAULT_RETENTION_S = 7 * 24 * 3600.0


@dataclass(frozen=True, slots=True)
class EnqueueResult:
    """`created` is False when a job with the same `key` already existed; `id` is then
    the existing job's id."""

    id: str
    created: bool


@dataclass(frozen=True, slots=True)
class Lease:
    """A reserved job: the right to run it until `deadline`, proven by `token`.

    `payload` is the envelope's bytes, decoded by the worker (a job that cannot be
    decoded is buried by the worker, never by the broker). `attempt` counts this
    reservation (1 for the first run).

    `stamp` is set only by a delivery working for a state store: the stamp of the copy
    it delivered (`Outgoing.stamp`), which the store's `Ledger.claim` checks.
    """

    job_id: str
    token: str
    queue: str
    attempt: int
    deadline: float
    payload: bytes
    stamp: str | None = None


@dataclass(frozen=True, slots=True)
class Outgoing:
    """A job a state store (`offload.brokers.roles.Ledger`) hands to a delivery to put
    on its queue now: the store has decided its key, depth limit and due time.

    `stamp` names this copy of the job: the store keeps the stamp of the one copy that
    may run, and `Ledger.claim` refuses a delivered copy with any other (a stale copy
    left by a publish that was retried).
    """

    job_id: str
    queue: str
    priority: int
    payload: bytes
    stamp: str


@dataclass(frozen=True, slots=True)
class JobInfo:
    """Everything a broker knows about one job, for inspection."""

    id: str
    task: str
    queue: str
    state: JobState
    priority: int
    attempt: int
    max_attempts: int | None  # None: the worker's task default applies
    key: str | None
    created_at: float
    due_at: float
    expires_at: float | None
    started_at: float | None
    finished_at: float | None
    worker_id: str | None
    lease_deadline: float | None
    error: ErrorInfo | None
    payload: bytes
    result: bytes | None = None
    cancel_requested: bool = False
    progress: Any = None  # the last `set_progress` value (decoded JSON); `get_job` only
    # Every attempt, oldest first, and how many older ones were not kept: filled by
    # `offload.attempts.job_with_history` (`Job.info()`, `offload show`), empty otherwise.
    attempts: list[Attempt] = field(default_factory=list)
    attempts_dropped: int = 0

    @classmethod
    def undecodable(cls, job_id: str, queue: str, problem: str, payload: bytes) -> JobInfo:
        """What inspection shows for a job whose stored record a broker cannot read:
        `dead` with an `Undecodable` error, which is what the broker makes of it as soon
        as its housekeeping meets it (one bad record costs one job, never a listing)."""
        return cls(
            id=job_id,
            task="?",
            queue=queue,
            state=JobState.DEAD,
            priority=0,
            attempt=0,
            max_attempts=None,
            key=None,
            created_at=0.0,
            due_at=0.0,
            expires_at=None,
            started_at=None,
            finished_at=None,
            worker_id=None,
            lease_deadline=None,
            error=ErrorInfo(
                "Undecodable", f"the broker's record of this job is corrupt: {problem}"
            ),
            payload=payload,
        )

    def envelope(self) -> Envelope | None:
        """The decoded envelope, or None if the stored payload is not one."""
        try:
            return decode_envelope(self.payload)
        except Exception:
            return None

    def result_value(self) -> Any:
        """The decoded result (None if the job has none)."""
        return None if self.result is None else decode_value(self.result)


@dataclass(frozen=True, slots=True)
class Ended:
    """A job that ended without a worker settling it (see `Broker.outbox`): `state` is
    `cancelled` or `expired`, `payload` its envelope's bytes."""

    job_id: str
    state: JobState
    payload: bytes


@dataclass(frozen=True, slots=True)
class Page:
    """One page of `list_jobs`; pass `cursor` back for the next, None at the end."""

    items: list[JobInfo]
    cursor: str | None


@dataclass(frozen=True, slots=True)
class QueueStats:
    """Counts per state for one queue, and `oldest_queued_at`: the earliest due time
    among its queued jobs, i.e. since when the longest-waiting ready job has waited."""

    states: dict[JobState, int]
    oldest_queued_at: float | None = None


@dataclass(frozen=True, slots=True)
class SweepReport:
    expired: int = 0
    purged: int = 0
    workers_removed: int = 0


@dataclass(frozen=True, slots=True)
class WorkerInfo:
    """A live worker, as registered by its heartbeat."""

    id: str
    hostname: str
    pid: int
    queues: list[str]
    concurrency: int
    started_at: float
    last_seen: float = 0.0
    running: int = 0
    processed: int = 0
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def last_reserve_at(self) -> float | None:
        """When its fetch loop last got an answer from `reserve` (from `extra`)."""
        value = self.extra.get("last_reserve_at")
        return float(value) if isinstance(value, int | float) else None

    @property
    def running_jobs(self) -> list[str]:
        """The ids of the jobs it runs now (from `extra`)."""
        value = self.extra.get("running_jobs")
        return [str(v) for v in value] if isinstance(value, list) else []
