"""Tasks: a function registered under a name, with the defaults its jobs start from.

`@app.task` returns a `Task[P, R]` that is still the function (call it directly in
tests or synchronous code) and adds `enqueue`, typed with the function's own
signature through `ParamSpec`, so a type checker flags a wrong argument at the
producer rather than at the worker.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any, Generic, ParamSpec, TypeVar

from offload.envelope import Backoff
from offload.errors import InvalidArguments
from offload.retry import DEFAULT_BACKOFF, RetryPolicy

if TYPE_CHECKING:
    from offload.app import Offload
    from offload.job import Job
    from offload.limits import Limits

__all__ = ["Call", "Enqueuer", "Overrides", "Task", "TaskOptions", "make_overrides"]

P = ParamSpec("P")
R = TypeVar("R")

#: A key may be given as a string, or computed from each call's arguments.
KeySpec = str | Callable[..., str]


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


@dataclass(frozen=True, slots=True)
class Call:
    """One set of arguments for a task, for `enqueue_many` and workflows (`task.call`
    also records the task, so `chain`, `group` and `chord` know what to run)."""

    args: tuple[Any, ...] = ()
    kwargs: dict[str, Any] = field(default_factory=dict)
    task: Task[Any, Any] | None = field(default=None, compare=False, repr=False)
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


def make_overrides(
    *,
    delay: float | timedelta | None = None,
    at: datetime | float | None = None,
    priority: int | None = None,
    queue: str | None = None,
    key: KeySpec | None = None,
    expires: float | timedelta | datetime | None = None,
    max_attempts: int | None = None,
    timeout: float | timedelta | None = None,
    backoff: Backoff | None = None,
) -> Overrides:
    """Validate and normalise the public enqueue options (rules: `offload.validation`).

    Raises:
        ConfigurationError: an option is out of bounds; the message names it.
    """
    from offload import validation as v
    from offload.errors import ConfigurationError

    if delay is not None and at is not None:
        raise ConfigurationError("give either delay= or at=, not both")
    if isinstance(expires, datetime):
        expires_at: float | None = v.timestamp(expires.timestamp(), "expires")
        expires_s = None
    else:
        expires_at, expires_s = None, v.duration(expires, "expires", positive=True)
    return Overrides(
        delay_s=v.duration(delay, "delay"),
        at=None if at is None else v.timestamp(_unix(at), "at"),
        priority=None if priority is None else v.priority(priority),
        queue=None if queue is None else v.queue_name(queue),
        key=key if key is None or callable(key) else v.job_key(key),
        expires_at=expires_at,
        expires_s=expires_s,
        max_attempts=None if max_attempts is None else v.attempts(max_attempts),
        timeout_s=v.duration(timeout, "timeout", positive=True),
        backoff=None if backoff is None else v.backoff(backoff),
    )


def _unix(at: datetime | float) -> float:
    return at.timestamp() if isinstance(at, datetime) else at


class Enqueuer(Generic[P]):
    """Enqueues jobs of one task with fixed options: `task.options(...)` returns one."""

    def __init__(
        self, app: Offload, name: str, overrides: Overrides, task: Task[P, Any] | None = None
    ) -> None:
        self._app = app
        self._name = name
        self._overrides = overrides
        self._task = task

    def call(self, *args: P.args, **kwargs: P.kwargs) -> Call:
        """Arguments for one job of `enqueue_many`, or one step of a workflow (with
        these options: `task.options(queue="gpu", timeout=3600).call(video)`)."""
        return Call(args, kwargs, self._task, overrides=self._options())

    def partial(self, *args: Any, **kwargs: Any) -> Call:
        """A later workflow step (a chain's next step, a chord's callback): its first
        argument is the result of the stage before it, so give only the rest.

        Not type-checked against the signature (a ParamSpec cannot drop a parameter);
        `chain`/`chord` check that the arguments bind when the workflow is built, at
        the producer."""
        return Call(args, kwargs, self._task, partial=True, overrides=self._options())

    def _options(self) -> Overrides | None:
        return None if self._overrides == Overrides() else self._overrides

    def enqueue(self, *args: P.args, **kwargs: P.kwargs) -> Job:
        """Enqueue one job and return its handle at once (the job runs later).

        Raises:
            SerializationError: an argument is not JSON-serializable (names which).
            BrokerError: the broker refused or could not be reached.
        """
        return self._app._enqueue_sync(self._name, [Call(args, kwargs)], self._overrides)[0]

    async def enqueue_async(self, *args: P.args, **kwargs: P.kwargs) -> Job:
        """`enqueue` for async code."""
        jobs = await self._app._enqueue(self._name, [Call(args, kwargs)], self._overrides)
        return jobs[0]

    def enqueue_in(self, connection: Any, /, *args: P.args, **kwargs: P.kwargs) -> Job:
        """Enqueue one job inside the application's open transaction on `connection`
        (a psycopg `Connection` to the broker's PostgreSQL database).

        Nothing is committed: the job exists when the application commits, and never
        if it rolls back; no worker sees it before. Only brokers with
        `capabilities.transactional_enqueue` can do this (PostgreSQL; not Redis, whose
        writes cannot join a SQL transaction).

        Raises:
            ConfigurationError: the broker cannot join a transaction, or `connection` is
                in autocommit mode outside a transaction block.
            SerializationError / InvalidArguments: as `enqueue`.
        """
        calls = [Call(args, kwargs)]
        return self._app._enqueue_in(connection, self._name, calls, self._overrides)[0]

    async def enqueue_in_async(self, connection: Any, /, *args: P.args, **kwargs: P.kwargs) -> Job:
        """`enqueue_in` on a psycopg `AsyncConnection`, for async code."""
        jobs = await self._app._enqueue_in_async(
            connection, self._name, [Call(args, kwargs)], self._overrides
        )
        return jobs[0]

    def enqueue_many(self, calls: Iterable[Call | tuple[Any, ...]]) -> list[Job]:
        """Enqueue many jobs in one broker round trip (fan-out). Tuples are positional
        arguments; use `task.call(...)` for keyword arguments."""
        return self._app._enqueue_sync(self._name, _calls(calls), self._overrides)

    async def enqueue_many_async(self, calls: Iterable[Call | tuple[Any, ...]]) -> list[Job]:
        """`enqueue_many` for async code."""
        return await self._app._enqueue(self._name, _calls(calls), self._overrides)


def _calls(calls: Iterable[Call | tuple[Any, ...]]) -> list[Call]:
    return [c if isinstance(c, Call) else Call(tuple(c)) for c in calls]


class Task(Enqueuer[P], Generic[P, R]):
    """A registered task. Calling it runs the function here and now; `enqueue` runs it
    later on a worker."""

    def __init__(self, app: Offload, fn: Callable[P, R], name: str, options: TaskOptions) -> None:
        super().__init__(app, name, Overrides(), self)
        self.fn = fn
        self.name = name
        self.defaults = options
        self.is_async = inspect.iscoroutinefunction(fn)
        self.signature = inspect.signature(fn)
        self.__doc__ = fn.__doc__
        self.__wrapped__ = fn

    def __call__(self, *args: P.args, **kwargs: P.kwargs) -> R:
        return self.fn(*args, **kwargs)

    def __repr__(self) -> str:
        return f"<Task {self.name}>"

    def check_arguments(self, args: Sequence[Any], kwargs: dict[str, Any]) -> None:
        """Raise `InvalidArguments` if a call with these arguments would fail to bind,
        so a wrong call fails at the producer instead of burning retries."""
        try:
            self.signature.bind(*args, **kwargs)
        except TypeError as exc:
            raise InvalidArguments(f"bad arguments for task {self.name!r}: {exc}") from None

    def options(
        self,
        *,
        delay: float | timedelta | None = None,
        at: datetime | float | None = None,
        priority: int | None = None,
        queue: str | None = None,
        key: KeySpec | None = None,
        expires: float | timedelta | datetime | None = None,
        max_attempts: int | None = None,
        timeout: float | timedelta | None = None,
        backoff: Backoff | None = None,
    ) -> Enqueuer[P]:
        """Options for the next enqueue(s), over the task's defaults.

        Args:
            delay: run no earlier than this many seconds from now.
            at: run no earlier than this time (aware datetime or Unix seconds).
            priority: higher runs first; FIFO within a priority.
            key: idempotency key: while a job with this key exists (until it is
                purged), enqueueing another returns the existing job. A callable
                gets each call's arguments and returns its key.
            expires: not started within this many seconds (or by this datetime) →
                `expired`, never run.
        """
        return Enqueuer(
            self._app,
            self.name,
            overrides=make_overrides(
                delay=delay,
                at=at,
                priority=priority,
                queue=queue,
                key=key,
                expires=expires,
                max_attempts=max_attempts,
                timeout=timeout,
                backoff=backoff,
            ),
            task=self,
        )
