"""The job envelope, its states, and the error record.

The envelope is what the producer writes and the worker reads; it is the wire format
(see `docs/envelope.schema.json`, produced by `offload.codec.envelope_schema()`), so
other languages can enqueue. It is immutable once enqueued: everything that changes
over a job's life (state, attempt, lease, error, result) is broker state, kept beside
the envelope, so that a state change never rewrites the payload.
"""

from __future__ import annotations

import os
import threading
import time
from enum import StrEnum
from typing import Any

import msgspec

__all__ = [
    "ACTIVE_STATES",
    "ENVELOPE_VERSION",
    "ERROR_MESSAGE_MAX",
    "ERROR_TRACEBACK_MAX",
    "TERMINAL_STATES",
    "Backoff",
    "Envelope",
    "ErrorInfo",
    "ChordRef",
    "Failure",
    "JobState",
    "Step",
    "clip",
    "id_floor",
    "new_job_id",
    "type_path",
]

#: Version of the envelope format; bumped on any incompatible change.
ENVELOPE_VERSION = 1


class JobState(StrEnum):
    """Where a job is in its life. Values are the lower-case words used everywhere."""

    SCHEDULED = "scheduled"  # delayed, or waiting for a retry
    QUEUED = "queued"  # ready to be reserved
    RUNNING = "running"  # leased by a worker until a deadline
    SUCCEEDED = "succeeded"
    DEAD = "dead"  # in the dead-letter queue
    EXPIRED = "expired"  # not started before its expiry; never ran (again)
    CANCELLED = "cancelled"


#: States a job never leaves (except `dead`, by an explicit replay).
TERMINAL_STATES = frozenset(
    {JobState.SUCCEEDED, JobState.DEAD, JobState.EXPIRED, JobState.CANCELLED}
)
#: States in which a job may still run.
ACTIVE_STATES = frozenset({JobState.SCHEDULED, JobState.QUEUED, JobState.RUNNING})


class Backoff(msgspec.Struct, frozen=True, omit_defaults=True):
    """Exponential backoff: attempt n waits up to `min(cap_s, base_s * 2**(n-1))` seconds.

    With `jitter` (the default) the wait is drawn uniformly from [0, that bound] ("full
    jitter"), so a fleet of workers failing together does not retry together.
    """

    base_s: float = 1.0
    cap_s: float = 300.0
    jitter: bool = True


class Step(msgspec.Struct, frozen=True, omit_defaults=True):
    """A workflow stage not enqueued yet (`offload.workflow`): one task call, or, when
    `branches` is set, a group whose branches (chains of stages) run in parallel.

    What the worker enqueues when the stage before it ends. `id` is fixed by the
    producer (a job's id; a group's id), so the producer can wait for any step; `queue`
    and `priority` are resolved by the producer too, and so are the step's own options
    (attempts, backoff, timeout, delay and expiry, in seconds from the step's start).
    `stop` (groups only): a failed member cancels what follows the group instead of
    passing it the failures.
    """

    id: str
    task: str = ""
    args: list[Any] = msgspec.field(default_factory=list)
    kwargs: dict[str, Any] = msgspec.field(default_factory=dict)
    queue: str = "default"
    priority: int = 0
    branches: list[list[Step]] | None = None
    stop: bool = False
    # per-step options (`task.options(...).call(...)`); None: the task's default
    max_attempts: int | None = None
    backoff: Backoff | None = None
    timeout_s: float | None = None
    delay_s: float | None = None  # from the step's start
    expires_s: float | None = None  # from the step's start


class ChordRef(msgspec.Struct, frozen=True, omit_defaults=True):
    """A group member's place: branch `index` of `total` of the group `id`. Carried by
    every step of the branch; the branch's end is recorded with `Broker.join`, and once
    every branch has ended, `then` (the stages after the group) starts with the list of
    their results, as a member of `parent` (the group this group is a branch of)."""

    id: str
    index: int
    total: int
    then: list[Step] = msgspec.field(default_factory=list)
    parent: ChordRef | None = None
    stop: bool = False
    # Written by offload before nesting (the chord's callback); read as `then`, so a
    # chord enqueued by an older producer still fires after an upgrade.
    callback: Step | None = None

    def __post_init__(self) -> None:
        if self.callback is not None and not self.then:
            msgspec.structs.force_setattr(self, "then", [self.callback])
            msgspec.structs.force_setattr(self, "callback", None)


class Failure(msgspec.Struct, frozen=True, omit_defaults=True):
    """A group member that did not succeed, as passed to the stage after the group
    (`current_job().failures`): its branch `index`, the job that failed, its end state
    (`dead`, `cancelled`, `expired`) and the error."""

    index: int
    job_id: str
    state: str
    error: str = ""


class Envelope(msgspec.Struct, kw_only=True, omit_defaults=True):
    """One job as it travels from producer to worker. Times are Unix epoch seconds."""

    id: str
    task: str
    args: list[Any] = msgspec.field(default_factory=list)
    kwargs: dict[str, Any] = msgspec.field(default_factory=dict)
    queue: str = "default"
    priority: int = 0
    max_attempts: int | None = None  # None: the task's default, resolved by the worker
    backoff: Backoff | None = None
    not_before: float | None = None
    expires_at: float | None = None
    key: str | None = None
    timeout_s: float | None = None
    result_ttl_s: float | None = None
    parent_id: str | None = None
    workflow_id: str | None = None
    then: list[Step] | None = None  # chain: the stages after this one
    chord: ChordRef | None = None  # group: this job's branch is a member
    failures: list[Failure] | None = None  # the first stage after a group: who failed
    # W3C trace context of the enqueue (`traceparent`, `tracestate`; `offload.tracing`):
    # optional, so jobs from producers without it run as before.
    trace: dict[str, str] | None = None
    created_at: float = 0.0
    v: int = ENVELOPE_VERSION

    @property
    def has_follow_ups(self) -> bool:
        """Whether this job's end starts something in its workflow (a next stage, its
        group's join): the jobs whose ends inside the broker go to `Broker.outbox`."""
        return bool(self.then) or self.chord is not None


#: Most characters an error keeps of its message, and of its traceback (see `clip`).
#: An exception may carry megabytes (a response body, a whole document); stored with
#: every retry and shown by every view, it would cost memory, bandwidth and time.
ERROR_MESSAGE_MAX = 8 * 1024
ERROR_TRACEBACK_MAX = 32 * 1024


class ErrorInfo(msgspec.Struct, frozen=True, omit_defaults=True):
    """Why an attempt failed, as stored with the job and shown by the CLI.

    `type` is the exception's class name (`ValueError`), or the reason offload
    recorded itself (`WorkerLost`, `LeaseExpired`, `UnknownTask`, ...). `type_path` is
    the importable path of the exception's class (`builtins.ValueError`,
    `myapp.errors.Declined`), so a reader can get the class back (Django's
    `TaskError.exception_class`); it is empty for a reason that is no exception, and in
    records written before it existed.
    """

    type: str
    message: str
    traceback: str = ""
    type_path: str = ""

    def __post_init__(self) -> None:
        """Bound each field (`clip`): the message to ERROR_MESSAGE_MAX, the type and
        traceback to ERROR_TRACEBACK_MAX, however the record was made (from a huge
        exception by a worker, or decoded from what an older worker stored)."""
        for name, limit in _ERROR_LIMITS:
            value = getattr(self, name)
            if len(value) > limit:
                msgspec.structs.force_setattr(self, name, clip(value, limit))


_ERROR_LIMITS = (
    ("type", ERROR_TRACEBACK_MAX),
    ("message", ERROR_MESSAGE_MAX),
    ("traceback", ERROR_TRACEBACK_MAX),
    ("type_path", ERROR_TRACEBACK_MAX),
)


def type_path(cls: type[BaseException]) -> str:
    """The importable path of an exception class: `module.qualname`."""
    return f"{cls.__module__}.{cls.__qualname__}"


def clip(text: str, limit: int) -> str:
    """`text` if it has at most `limit` characters; else its head and its tail (where a
    message says what failed, and a traceback where) around a `[... N characters cut
    ...]` note, at most `limit` characters in all (a limit shorter than the note gives
    the note)."""
    if len(text) <= limit:
        return text
    note = " [... {} characters cut ...] "
    keep = max(limit - len(note.format(len(text))), 0)
    head = (keep + 1) // 2
    tail = text[len(text) - (keep - head) :] if keep > head else ""
    return f"{text[:head]}{note.format(len(text) - keep)}{tail}"


def id_floor(job_id: str, margin_s: float = 60.0) -> str:
    """A lower bound for the ids made since `job_id` (ids sort by creation time),
    `margin_s` early; "" if `job_id` is not one of ours."""
    try:
        ms = int(job_id[:12], 16) if len(job_id) == 32 else None
    except ValueError:
        ms = None
    return "" if ms is None else f"{max(ms - int(margin_s * 1000), 0):012x}"


#: Random bytes drawn at once for job ids (400 ids' worth): a `getrandom` system call
#: per id cost about 1% of a sync `task.enqueue()` on Redis (issue 16).
_ENTROPY_BYTES = 4000


class _Entropy(threading.local):
    """A thread's unused bytes of `os.urandom`, and the process that drew them: a
    forked child draws its own (else it would make its parent's next ids), even where
    the fork runs no `os.register_at_fork` hooks."""

    pid = 0
    pool = b""
    at = _ENTROPY_BYTES


_entropy = _Entropy()


def new_job_id() -> str:
    """A 32-hex-digit id that sorts by creation time (48-bit ms clock + 80 random bits).

    Time-ordered ids keep database indexes append-mostly and make listings readable.
    The random bits are `os.urandom`'s, taken from a per-thread pool (`_Entropy`).
    """
    e = _entropy
    at = e.at
    if at >= _ENTROPY_BYTES or e.pid != os.getpid():
        e.pool, e.pid, at = os.urandom(_ENTROPY_BYTES), os.getpid(), 0
    e.at = at + 10
    return f"{time.time_ns() // 1_000_000:012x}{e.pool[at : at + 10].hex()}"
