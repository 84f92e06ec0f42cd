"""Tasks: a function registered under a name, with the defaults its jobs start from.

`@app.task` returns a `Task[P, R]` that is still the function (call it directly in
tests or synchronous code) and adds `enqueue`, typed with the function's own
signature through `ParamSpec`, so a type checker flags a wrong argument at the
producer rather than at the worker.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterable, Sequence
from typing import Any, Generic, ParamSpec, TypeVar, Unpack

from offload.errors import InvalidArguments
from offload.job import Job, handles
from offload.options import Call, EnqueueOptions, Overrides, TaskOptions, make_overrides
from offload.producer import Producer

# Call, Overrides, TaskOptions and make_overrides live in `offload.options`; they are
# named here too, where they were first, for code that imports them from here.
__all__ = ["Call", "Enqueuer", "Overrides", "Task", "TaskOptions", "make_overrides"]

P = ParamSpec("P")
R = TypeVar("R")

#: Call shapes (positional count, keyword names) whose binding verdict a task keeps.
MAX_SHAPES = 256
_UNKNOWN: Any = object()


class Enqueuer(Generic[P]):
    """Enqueues jobs of one task with fixed options: `task.options(...)` returns one."""

    def __init__(
        self,
        producer: Producer,
        name: str,
        overrides: Overrides,
        task: Task[P, Any] | None = None,
    ) -> None:
        self.producer = producer
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
        # `enqueue_many` of one call, without its conversions (a web request's path)
        [result] = self.producer.enqueue(self._name, [Call(args, kwargs)], self._overrides)
        return Job(self.producer, result.id, created=result.created)

    async def enqueue_async(self, *args: P.args, **kwargs: P.kwargs) -> Job:
        """`enqueue` for async code."""
        return (await self.enqueue_many_async([Call(args, kwargs)]))[0]

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
        results = self.producer.enqueue_in(connection, self._name, calls, self._overrides)
        return handles(self.producer, results)[0]

    async def enqueue_in_async(self, connection: Any, /, *args: P.args, **kwargs: P.kwargs) -> Job:
        """`enqueue_in` on a psycopg `AsyncConnection`, for async code."""
        results = await self.producer.enqueue_in_async(
            connection, self._name, [Call(args, kwargs)], self._overrides
        )
        return handles(self.producer, results)[0]

    def enqueue_many(self, calls: Iterable[Call | tuple[Any, ...]]) -> list[Job]:
        """Enqueue many jobs in one broker round trip (fan-out). Tuples are positional
        arguments; use `task.call(...)` for keyword arguments."""
        results = self.producer.enqueue(self._name, _calls(calls), self._overrides)
        return handles(self.producer, results)

    async def enqueue_many_async(self, calls: Iterable[Call | tuple[Any, ...]]) -> list[Job]:
        """`enqueue_many` for async code."""
        results = await self.producer.enqueue_async(self._name, _calls(calls), self._overrides)
        return handles(self.producer, results)


def _calls(calls: Iterable[Call | tuple[Any, ...]]) -> list[Call]:
    return [c if isinstance(c, Call) else Call(tuple(c)) for c in calls]


class Task(Enqueuer[P], Generic[P, R]):
    """A registered task. Calling it runs the function here and now; `enqueue` runs it
    later on a worker."""

    def __init__(
        self, producer: Producer, fn: Callable[P, R], name: str, options: TaskOptions
    ) -> None:
        super().__init__(producer, name, Overrides(), self)
        self.fn = fn
        self.name = name
        self.defaults = options
        self.is_async = inspect.iscoroutinefunction(fn)
        self.signature = inspect.signature(fn)
        self._shapes: dict[object, str | None] = {}  # see check_arguments
        self.__doc__ = fn.__doc__
        self.__wrapped__ = fn

    def __call__(self, *args: P.args, **kwargs: P.kwargs) -> R:
        return self.fn(*args, **kwargs)

    def __repr__(self) -> str:
        return f"<Task {self.name}>"

    def check_arguments(self, args: Sequence[Any], kwargs: dict[str, Any]) -> None:
        """Raise `InvalidArguments` if a call with these arguments would fail to bind,
        so a wrong call fails at the producer instead of burning retries.

        Whether a call binds depends only on how many positional arguments it has and
        which keyword names, never on the values, so the verdict is remembered per
        shape (`inspect.Signature.bind` cost the worker and the producer several µs
        per job; issue 16).
        """
        shape = (len(args), *kwargs) if kwargs else len(args)
        verdict = self._shapes.get(shape, _UNKNOWN)
        if verdict is _UNKNOWN:
            try:
                self.signature.bind(*args, **kwargs)
            except TypeError as exc:
                verdict = f"bad arguments for task {self.name!r}: {exc}"
            else:
                verdict = None
            if len(self._shapes) < MAX_SHAPES:
                self._shapes[shape] = verdict
        if verdict is not None:
            raise InvalidArguments(verdict)

    def options(self, **options: Unpack[EnqueueOptions]) -> Enqueuer[P]:
        """Options for the next enqueue(s), over the task's defaults: the job options
        (`queue`, `priority`, `max_attempts`, `backoff`, `timeout`, `expires`, also as
        a datetime) and `delay`, `at`, `key` (`offload.options.EnqueueOptions`).

        Raises:
            ConfigurationError: a bad option; TypeError: not an enqueue option.
        """
        return Enqueuer(self.producer, self.name, make_overrides(**options), task=self)
