"""The values brokers take and return: leases, job records, pages, counts, workers.

Plain frozen dataclasses shared by every broker role (`offload.brokers.roles`), so a
broker's answers look the same whichever broker gives them; how a lease ends
(`Ending`, and `Settlement`: what `Delivery.settle_many` takes); and an attempt's
record (`Attempt`: `offload.attempts` reads a job's history from them, above the
brokers).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Any

import msgspec

from offload.codec import decode_envelope, decode_value
from offload.envelope import Envelope, ErrorInfo, JobState

__all__ = [
    "DEFAULT_RETENTION_S",
    "Attempt",
    "AttemptOutcome",
    "LEASE_EXPIRED",
    "Ended",
    "Ending",
    "EnqueueResult",
    "FINISHED_KEEP_S",
    "Finished",
    "JobInfo",
    "Lease",
    "Outgoing",
    "Outcome",
    "Page",
    "QueueStats",
    "Settlement",
    "SweepReport",
    "WorkerInfo",
    "created_cursor",
    "in_range",
    "minute_of",
]

#: The error every broker records on a job whose lease lapsed (the same words everywhere).
LEASE_EXPIRED = ErrorInfo("LeaseExpired", "the lease lapsed: the worker died or stalled")

#: How long expired and cancelled jobs (and succeeded jobs with no result TTL) are
#: kept for inspection before `sweep` deletes them: 7 days, in seconds.
DEFAULT_RETENTION_S = 7 * 24 * 3600.0

#: How far back brokers keep the per-minute counts of finished jobs (`finished`):
#: `sweep` drops older minutes. Two hours, in seconds: the overview shows the last one.
FINISHED_KEEP_S = 2 * 3600.0


class Outcome(enum.StrEnum):
    """How a job (or one attempt of it) ended, as counted per minute by `finished`."""

    #: An ack: `running → succeeded`.
    SUCCEEDED = "succeeded"
    #: A retry: the attempt failed and the job will run again (`running → scheduled`).
    FAILED = "failed"
    #: A bury: `running → dead` (also a corrupt record buried by housekeeping).
    DEAD = "dead"
    #: Cancelled while running (a settlement) or while waiting (`cancel`).
    CANCELLED = "cancelled"
    #: Expired while waiting (by `reserve` or `sweep`).
    EXPIRED = "expired"


class AttemptOutcome(enum.StrEnum):
    SUCCEEDED = "succeeded"
    RETRIED = "retried"  # failed; the job was scheduled again
    DEAD = "dead"  # failed for the last time (dead-letter queue)
    CANCELLED = "cancelled"  # stopped by a cancel while it ran
    RUNNING = "running"  # the attempt now under way
    LOST = "lost"  # left no outcome: its worker died or its lease lapsed


class Attempt(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    """One run of a job. `number` is the job's attempt count for that run (1 for the
    first; a replayed dead job counts from 1 again). Times are Unix epoch seconds.
    `trace` is the W3C trace context (`traceparent`, ...) of the first attempt of the
    job's run, when a tracing hook gave one; absent in records of older versions."""

    number: int
    outcome: AttemptOutcome
    worker_id: str | None = None
    started_at: float | None = None
    finished_at: float | None = None
    error: ErrorInfo | None = None
    trace: dict[str, str] | None = None


@dataclass(frozen=True, slots=True)
class Finished:
    """How many jobs of `queue` ended as `outcome` during one minute (`minute`: Unix
    time // 60, by the broker's clock when they ended)."""

    queue: str
    minute: int
    outcome: Outcome
    count: int


def in_range(t: float, since: float | None, until: float | None) -> bool:
    """Whether `t` lies within `since` and `until` (both included; None: unbounded):
    `list_jobs`' time filter."""
    return (since is None or t >= since) and (until is None or t <= until)


def created_cursor(cursor: str) -> tuple[float, int]:
    """The (created_at, seq) of a time-range listing's cursor (`created_at:seq`), as
    the SQL brokers and memory write it.

    Raises:
        ValueError: `cursor` is not one, naming it.
    """
    at, _, seq = cursor.rpartition(":")
    try:
        return float(at), int(seq)
    except ValueError:
        raise ValueError(f"not a cursor of a time-range listing: {cursor!r}") from None


def minute_of(t: float) -> int:
    """The minute (Unix time // 60) that `finished` counts an end at time `t` in."""
    return int(t // 60)


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


class Ending(enum.StrEnum):
    """How a lease ends: the five ways a worker settles a running job."""

    #: `running → succeeded`, storing the result for its TTL.
    ACK = "ack"
    #: `running → scheduled` until `at`, recording the error (the attempt counted).
    RETRY = "retry"
    #: `running → dead` (the dead-letter queue), recording the error as the reason.
    BURY = "bury"
    #: `running → scheduled` until `at`, the attempt not counted and no error recorded:
    #: a flow limit (rate or concurrency) held the job back, so waiting uses no attempt.
    DEFER = "defer"
    #: `running → cancelled`, recording the error: the worker stopped a job flagged by
    #: `cancel` (it may have run in part). Kept for the retention, like a job cancelled
    #: before it started.
    CANCEL = "cancel"

    @property
    def state(self) -> JobState:
        """The state the job is in after this ending."""
        return _END_STATES[self]

    @property
    def outcome(self) -> Outcome | None:
        """How `Inspection.finished` counts this ending; None for a defer (a flow limit
        held the job back: nothing ended)."""
        return _END_OUTCOMES.get(self)


_END_STATES = {
    Ending.ACK: JobState.SUCCEEDED,
    Ending.RETRY: JobState.SCHEDULED,
    Ending.BURY: JobState.DEAD,
    Ending.DEFER: JobState.SCHEDULED,
    Ending.CANCEL: JobState.CANCELLED,
}

_END_OUTCOMES = {
    Ending.ACK: Outcome.SUCCEEDED,
    Ending.RETRY: Outcome.FAILED,
    Ending.BURY: Outcome.DEAD,
    Ending.CANCEL: Outcome.CANCELLED,
}


@dataclass(frozen=True, slots=True)
class Settlement:
    """One lease ending: which lease, how (`ending`), and with what.

    `result` and `result_ttl_s` (None: the broker's retention) belong to `ack`; `error`
    to `retry`, `bury` and `cancel`; `at` (when the job is due again) to `retry` and
    `defer`. Build one with the class methods, which take exactly what each needs.
    """

    lease: Lease
    ending: Ending
    result: bytes | None = None
    result_ttl_s: float | None = None
    error: ErrorInfo | None = None
    at: float | None = None

    def __post_init__(self) -> None:
        needs_error = self.ending in (Ending.RETRY, Ending.BURY, Ending.CANCEL)
        if needs_error != (self.error is not None):
            raise ValueError(
                f"a {self.ending} settlement {'needs' if needs_error else 'takes no'} error"
            )
        needs_at = self.ending in (Ending.RETRY, Ending.DEFER)
        if needs_at != (self.at is not None):
            raise ValueError(
                f"a {self.ending} settlement {'needs' if needs_at else 'takes no'} `at`"
            )
        if self.ending is not Ending.ACK and (
            self.result is not None or self.result_ttl_s is not None
        ):
            raise ValueError(f"a {self.ending} settlement takes no result")

    @property
    def state(self) -> JobState:
        """The state the job is in once this settlement is recorded."""
        return self.ending.state

    @classmethod
    def ack(
        cls, lease: Lease, result: bytes | None, *, result_ttl_s: float | None = None
    ) -> Settlement:
        return cls(lease, Ending.ACK, result=result, result_ttl_s=result_ttl_s)

    @classmethod
    def retry(cls, lease: Lease, *, at: float, error: ErrorInfo) -> Settlement:
        return cls(lease, Ending.RETRY, error=error, at=at)

    @classmethod
    def bury(cls, lease: Lease, *, error: ErrorInfo) -> Settlement:
        return cls(lease, Ending.BURY, error=error)

    @classmethod
    def defer(cls, lease: Lease, *, at: float) -> Settlement:
        return cls(lease, Ending.DEFER, at=at)

    @classmethod
    def cancel(cls, lease: Lease, *, error: ErrorInfo) -> Settlement:
        return cls(lease, Ending.CANCEL, error=error)


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
