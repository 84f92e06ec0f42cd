"""Task and enqueue options, declared once.

What a caller may write is declared in one typed record, `JobOptions`, extended by
`EnqueueOptions` (what one enqueue or one workflow step adds) and `TaskDeclaration`
(what only a task declares). `@app.task(...)`, `task.options(...)` (and so a workflow
step's `task.options(...).call(...)`) and `app.options(name, ...)` all take them as
`**options`, so each option has one name, one type and one description. They are
checked and normalised into a task's defaults (`TaskOptions`, by `task_options`) or one
enqueue's overrides (`Overrides`, by `make_overrides`).

These records sit below the producer, the tasks and the workflow engine, which all
read them, so that none of those has to import another to learn an option.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any, Protocol, TypedDict, Unpack

from offload import validation as v
from offload.envelope import Backoff
from offload.errors import ConfigurationError
from offload.retry import DEFAULT_BACKOFF, RetryPolicy

if TYPE_CHECKING:
    from offload.limits import Limits

__all__ = [
    "Call",
    "Declared",
    "EnqueueOptions",
    "JobOptions",
    "KeySpec",
    "Overrides",
    "TaskDeclaration",
    "TaskOptions",
    "make_overrides",
    "task_options",
]

#: A key may be given as a string, or computed from each call's arguments.
KeySpec = str | Callable[..., str]


class JobOptions(TypedDict, total=False):
    """The options of a task's jobs: the task's defaults (`@app.task(...)`), or one
    enqueue's and one workflow step's (`task.options(...)`). Left out: the default.

    Keys:
        queue: the queue the jobs go to (default: the app's).
        priority: higher runs first; FIFO within a priority (default 0).
        max_attempts: total runs including the first (1 = never retry; default 5).
        backoff: retry delays `base_s * 2**(attempt-1)`, capped at `cap_s`, full
            jitter (defaults: 1 s, 300 s, on).
        timeout: stop an attempt after this long (sync handlers then run in a child
            process, the only way to really stop them).
        expires: a job not started this long after its enqueue (per enqueue also: by
            this aware datetime) is `expired` and never runs.
    """

    queue: str | None
    priority: int | None
    max_attempts: int | None
    backoff: Backoff | None
    timeout: float | timedelta | None
    expires: float | timedelta | datetime | None


class EnqueueOptions(JobOptions, total=False):
    """`JobOptions`, and what only one enqueue sets (`task.options(...)`,
    `app.options(name, ...)`); a workflow step takes `delay` but not `at` or `key`.

    Keys:
        delay: run no earlier than this many seconds from now.
        at: run no earlier than this time (aware datetime or Unix seconds).
        key: idempotency key: while a job with this key exists (until it is purged),
            enqueueing another returns the existing job. A callable gets each call's
            arguments and returns its key.
    """

    delay: float | timedelta | None
    at: datetime | float | None
    key: KeySpec | None


class TaskDeclaration(JobOptions, total=False):
    """`JobOptions` as a task's defaults, and what only a task declares
    (`@app.task(...)`).

    Keys:
        name: defaults to `module.qualname`; give a stable name if the function may
            move, since queued jobs refer to it by name.
        retry_on / give_up_on: exception types that retry / bury at once.
        result_ttl: keep a succeeded job and its result this long (default: a day).
        rate_limit: at most this many starts per period across all workers:
            `"10/s"`, `"600/m"`, `"1000/h"` (a burst of the count when idle).
        rate_key: one rate limit per key computed from each job's arguments
            (e.g. `lambda *a, **kw: kw["provider"]`), instead of one per task.
        concurrency_limit: at most this many jobs running at once, fleet-wide.
        concurrency_key: one concurrency limit per key from the arguments.
        max_depth: enqueue raises `QueueFull` past this many waiting jobs in the
            task's queue (overrides the app's `max_queue_depth`).
    """

    name: str | None
    retry_on: tuple[type[BaseException], ...]
    give_up_on: tuple[type[BaseException], ...]
    result_ttl: float | timedelta | None
    rate_limit: str | None
    rate_key: Callable[..., str] | None
    concurrency_limit: int | None
    concurrency_key: Callable[..., str] | None
    max_depth: int | None


@dataclass(frozen=True, slots=True)
class TaskOptions:
    """Per-task defaults; every enqueue starts from these.

    Attributes:
        expires_s: a job not started within this many seconds of its enqueue is
            marked `expired` and never runs.
        timeout_s: a running attempt is stopped after this many seconds (async
            handlers are cancelled; sync handlers run in a child process that is
            killed), and the attempt fails with `JobTimeout`.
        result_ttl_s: how long a succeeded job and its result are kept.
        limits: rate and concurrency limits, checked by the worker at admission.
        max_depth: enqueue raises `QueueFull` past this many waiting jobs in the
            task's queue (None: the app's `max_queue_depth`).
    """

    queue: str = "default"
    priority: int = 0
    max_attempts: int = 5
    backoff: Backoff = DEFAULT_BACKOFF
    timeout_s: float | None = None
    expires_s: float | None = None
    result_ttl_s: float | None = 24 * 3600.0
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    limits: Limits | None = None
    max_depth: int | None = None


class Declared(Protocol):
    """What the producer and the workflows read of a registered task (`Task`)."""

    @property
    def name(self) -> str: ...

    @property
    def defaults(self) -> TaskOptions: ...

    def check_arguments(self, args: Sequence[Any], kwargs: dict[str, Any]) -> None: ...


@dataclass(frozen=True, slots=True)
class Call:
    """One set of arguments for a task, for `enqueue_many` and workflows (`task.call`
    also records the task, so `chain`, `group` and `chord` know what to run)."""

    args: tuple[Any, ...] = ()
    kwargs: dict[str, Any] = field(default_factory=dict)
    task: Declared | None = field(default=None, compare=False, repr=False)
    partial: bool = False  # `task.partial`: the first argument comes from the stage before
    overrides: Overrides | None = None  # `task.options(...).call(...)`: this call's options


@dataclass(frozen=True, slots=True)
class Overrides:
    """Per-enqueue options; None means "the task's default"."""

    delay_s: float | None = None
    at: float | None = None
    priority: int | None = None
    queue: str | None = None
    key: KeySpec | None = None
    expires_at: float | None = None
    expires_s: float | None = None
    max_attempts: int | None = None
    timeout_s: float | None = None
    backoff: Backoff | None = None


def make_overrides(**options: Unpack[EnqueueOptions]) -> Overrides:
    """Validate and normalise the options of one enqueue (rules: `offload.validation`).

    Raises:
        ConfigurationError: an option is out of bounds; the message names it.
        TypeError: an option that is not one of `EnqueueOptions`.
    """
    _known(options, EnqueueOptions, "options")
    delay, at, expires = options.get("delay"), options.get("at"), options.get("expires")
    if delay is not None and at is not None:
        raise ConfigurationError("give either delay= or at=, not both")
    if isinstance(expires, datetime):
        expires_at: float | None = v.timestamp(_unix(expires, "expires"), "expires")
        expires_s = None
    else:
        expires_at, expires_s = None, v.duration(expires, "expires", positive=True)
    priority, queue, key = options.get("priority"), options.get("queue"), options.get("key")
    max_attempts, backoff = options.get("max_attempts"), options.get("backoff")
    return Overrides(
        delay_s=v.duration(delay, "delay"),
        at=None if at is None else v.timestamp(_unix(at, "at"), "at"),
        priority=None if priority is None else v.priority(priority),
        queue=None if queue is None else v.queue_name(queue),
        key=key if key is None or callable(key) else v.job_key(key),
        expires_at=expires_at,
        expires_s=expires_s,
        max_attempts=None if max_attempts is None else v.attempts(max_attempts),
        timeout_s=v.duration(options.get("timeout"), "timeout", positive=True),
        backoff=None if backoff is None else v.backoff(backoff),
    )


def task_options(options: TaskDeclaration, *, default_queue: str) -> TaskOptions:
    """Validate a task's declaration into its defaults (limits are added once the
    task has its name: `Limits` are named after it).

    Raises:
        ConfigurationError: an option is out of bounds; the message names it.
        TypeError: an option that is not one of `TaskDeclaration`.
    """
    _known(options, TaskDeclaration, "task")
    queue = options.get("queue")
    max_depth = v.depth(options.get("max_depth"), "max_depth")
    return TaskOptions(
        queue=default_queue if queue is None else v.queue_name(queue),
        priority=v.priority(options.get("priority", 0)),
        max_attempts=v.attempts(options.get("max_attempts", 5)),
        backoff=v.backoff(options.get("backoff", DEFAULT_BACKOFF)),
        timeout_s=v.duration(options.get("timeout"), "timeout", positive=True),
        expires_s=v.duration(options.get("expires"), "expires", positive=True),
        result_ttl_s=v.duration(options.get("result_ttl", 24 * 3600.0), "result_ttl"),
        retry=RetryPolicy(
            retry_on=options.get("retry_on", (Exception,)),
            give_up_on=options.get("give_up_on", ()),
        ),
        max_depth=max_depth,
    )


def _known(options: Mapping[str, object], record: type[Any], where: str) -> None:
    """Refuse a name the record does not declare, as Python refuses a keyword."""
    for name in options:
        if name not in record.__optional_keys__:
            raise TypeError(f"{where}() got an unexpected keyword argument {name!r}")


def _unix(at: datetime | float, what: str) -> float:
    """Unix seconds of a time given as a datetime (with its time zone) or seconds.

    Raises:
        ConfigurationError: a naive datetime. Python reads it in the local time zone
            of the process, so `datetime.utcnow() + timedelta(minutes=10)` on a host in
            New York made a job due in 310 minutes, and hosts set differently disagree.
    """
    if not isinstance(at, datetime):
        return at
    if at.tzinfo is None or at.utcoffset() is None:
        raise ConfigurationError(
            f"{what} is a datetime without a time zone ({at.isoformat()}), which each host "
            "reads in its own; give one, e.g. datetime.now(UTC) + timedelta(minutes=10)"
        )
    return at.timestamp()
