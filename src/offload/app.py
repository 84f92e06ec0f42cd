"""`Offload`: the task registry, configuration, and the producer side.

One `Offload` object is passed around explicitly (there is no global app); a process
may hold several, each with its own broker.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable
from dataclasses import replace
from datetime import timedelta
from typing import TYPE_CHECKING, Any, ParamSpec, TypeVar, Unpack, overload

from offload import pausing, validation
from offload._portal import Portal
from offload._redact import redact_url
from offload.brokers.base import Broker
from offload.clock import Clock, SystemClock
from offload.errors import ConfigurationError, UnknownTask
from offload.hooks import Hook, Hooks
from offload.job import Job
from offload.limits import make_limits
from offload.options import EnqueueOptions, TaskDeclaration, make_overrides, task_options
from offload.producer import Producer
from offload.task import Enqueuer, Task

if TYPE_CHECKING:
    from offload.schedule import Misfire, Overlap, Schedule, ScheduleEntry
    from offload.testing import FakeClock, InlineRunner

__all__ = ["DEFAULT_URL", "Offload"]

P = ParamSpec("P")
R = TypeVar("R")

#: The embedded default: a SQLite file in the working directory.
DEFAULT_URL = "sqlite:///offload.db"


class Offload:
    """A task registry bound to one broker.

    Args:
        url: broker URL; else the `OFFLOAD_URL` environment variable; else
            `sqlite:///offload.db`. `memory://` for tests.
        clock: time source for the broker and workers (tests pass a `FakeClock`).
        queue: queue of tasks that do not name one.
        max_queue_depth: backpressure: an enqueue that would bring a queue past this
            many waiting (`queued` + `scheduled`) jobs raises `QueueFull` and stores
            nothing (None: unbounded). A task's `max_depth` overrides it.

    Raises:
        ConfigurationError: the URL is malformed or names an unknown scheme.
    """

    def __init__(
        self,
        url: str | None = None,
        *,
        clock: Clock | None = None,
        queue: str = "default",
        max_queue_depth: int | None = None,
    ) -> None:
        max_depth = validation.depth(max_queue_depth, "max_queue_depth")
        self.default_queue = validation.queue_name(queue)
        self.tasks: dict[str, Task[Any, Any]] = {}
        self.schedules: dict[str, ScheduleEntry] = {}
        self.producer = Producer(
            url or os.environ.get("OFFLOAD_URL") or DEFAULT_URL,
            clock=clock or SystemClock(),
            tasks=self.tasks,
            default_queue=self.default_queue,
            max_queue_depth=max_depth,
        )

    def __repr__(self) -> str:
        return f"<Offload {redact_url(self.broker.url)} tasks={len(self.tasks)}>"

    @property
    def hooks(self) -> Hooks:
        """The app's lifecycle hooks (`offload.hooks`), held by its producer, which
        runs the enqueue ones on every path."""
        return self.producer.hooks

    def add_hook(self, hook: Hook) -> None:
        """Register a lifecycle hook (`offload.hooks.Hook`) for this app's enqueues and
        workers; hooks run in the order added, and one that raises harms no job."""
        self.hooks.add(hook)

    # -- registry ----------------------------------------------------------------------

    @overload
    def task(self, fn: Callable[P, R]) -> Task[P, R]: ...

    @overload
    def task(
        self, **options: Unpack[TaskDeclaration]
    ) -> Callable[[Callable[P, R]], Task[P, R]]: ...

    def task(
        self, fn: Callable[..., Any] | None = None, **options: Unpack[TaskDeclaration]
    ) -> Task[Any, Any] | Callable[[Callable[..., Any]], Task[Any, Any]]:
        """Register a function as a task (`@app.task` or `@app.task(...)`).

        The options are `offload.options.TaskDeclaration`'s: `name`, the job options
        as the task's defaults (`queue`, `priority`, `max_attempts`, `backoff`,
        `timeout`, `expires`), `retry_on` / `give_up_on`, `result_ttl`, the flow
        limits (`rate_limit`, `rate_key`, `concurrency_limit`, `concurrency_key`) and
        `max_depth`.

        Raises:
            ConfigurationError: a bad option, or the name is already taken.
            TypeError: an option that is not one of them.
        """
        defaults = task_options(options, default_queue=self.default_queue)
        flow = functools.partial(
            make_limits,
            rate_limit=options.get("rate_limit"),
            rate_key=options.get("rate_key"),
            concurrency_limit=options.get("concurrency_limit"),
            concurrency_key=options.get("concurrency_key"),
        )
        name = options.get("name")
        # Bad options fail here, before a function is given (so the name, if any).
        flow(name if isinstance(name, str) and name else "?")

        def register(f: Callable[..., Any]) -> Task[Any, Any]:
            task_name = validation.task_name(name or f"{f.__module__}.{f.__qualname__}")
            if task_name in self.tasks:
                raise ConfigurationError(f"a task named {task_name!r} is already registered")
            limits = flow(task_name)
            registered = Task(self.producer, f, task_name, replace(defaults, limits=limits))
            self.tasks[task_name] = registered
            return registered

        return register(fn) if fn is not None else register

    def find_task(self, name: str) -> Task[Any, Any] | None:
        """The task a worker runs for jobs named `name`, or None if it knows none.

        The registry here; an integration that finds its tasks by name (Django's, by
        module path: `offload.contrib.django`) extends it.
        """
        return self.tasks.get(name)

    def get_task(self, name: str) -> Task[Any, Any]:
        """The task registered under `name`.

        Raises:
            UnknownTask: no such task; the message lists the registered names.
        """
        try:
            return self.tasks[name]
        except KeyError:
            known = ", ".join(sorted(self.tasks)) or "none"
            raise UnknownTask(f"no task named {name!r} (registered: {known})") from None

    def schedule(
        self,
        task: Task[Any, Any] | str,
        schedule: Schedule,
        *,
        args: tuple[Any, ...] | list[Any] = (),
        kwargs: dict[str, Any] | None = None,
        id: str | None = None,
        overlap: Overlap = "skip",
        misfire: Misfire = "run_once",
        max_catch_up: int = 10,
        grace: float | timedelta = 60.0,
    ) -> ScheduleEntry:
        """Enqueue `task` (a task or a task name) at every fire of `schedule`.

        `offload scheduler` (or `offload worker --scheduler`) runs it; replicas are
        safe, since each fire is enqueued under the key `schedule:{id}:{fire_ts}`.

        Args:
            schedule: `Cron("0 3 * * *", tz="Europe/Paris")` or `Every(seconds)`.
            args / kwargs: the arguments of every fire (checked now, as at enqueue).
            id: the schedule's stable name (default: the task name); give one to
                schedule a task twice.
            overlap: `skip` a tick while the previous run is unfinished (default),
                `allow` it, or `replace` (cancel) the previous run.
            misfire: ticks missed while no scheduler ran: `skip` them, `run_once`
                (default: the latest), or `run_all` (up to `max_catch_up`).
            grace: a tick at most this late (seconds) is on time, not missed.

        Raises:
            InvalidSchedule: not a `Cron` or `Every`.
            ConfigurationError: a bad policy, or the id is already taken.
            InvalidArguments / SerializationError: the arguments do not fit the task
                or are not JSON.
        """
        from offload.schedule import make_entry

        entry = make_entry(
            self.tasks,
            task,
            schedule,
            args=args,
            kwargs=kwargs,
            id=id,
            overlap=overlap,
            misfire=misfire,
            max_catch_up=max_catch_up,
            grace=grace,
        )
        if entry.id in self.schedules:
            raise ConfigurationError(f"a schedule {entry.id!r} exists; pass id= to add another")
        self.schedules[entry.id] = entry
        return entry

    def queues(self) -> list[str]:
        """The queues of the registered tasks, and the default queue."""
        return sorted({t.defaults.queue for t in self.tasks.values()} | {self.default_queue})

    # -- producer ----------------------------------------------------------------------

    def enqueue(self, name: str, *args: Any, **kwargs: Any) -> Job:
        """Enqueue a job by task name, for code that does not import the task.

        The name need not be registered in this process (a producer may be a separate
        service); if it is, its defaults apply.
        """
        return self.options(name).enqueue(*args, **kwargs)

    async def enqueue_async(self, name: str, *args: Any, **kwargs: Any) -> Job:
        """`enqueue` for async code."""
        return await self.options(name).enqueue_async(*args, **kwargs)

    def options(self, name: str, **options: Unpack[EnqueueOptions]) -> Enqueuer[Any]:
        """`Task.options` by task name."""
        task = self.tasks.get(name)
        if task is not None:
            return task.options(**options)
        return Enqueuer(self.producer, name, make_overrides(**options))

    def job(self, job_id: str) -> Job:
        """A handle on an existing job (no broker call is made)."""
        return Job(self.producer, job_id)

    # -- pause and resume (`offload.pausing`) -------------------------------------------

    async def pause_async(self, queue: str) -> bool:
        """Stop every worker reserving from `queue` (within about a second), durably,
        until `resume`; its jobs wait and enqueues are still accepted. True if it was
        not paused already."""
        return await pausing.set_queue(await self.connected_broker(), queue, True)

    async def resume_async(self, queue: str) -> bool:
        """Let workers reserve from `queue` again. True if it was paused."""
        return await pausing.set_queue(await self.connected_broker(), queue, False)

    async def pause_schedule_async(self, schedule_id: str) -> bool:
        """Stop every scheduler firing the schedule `schedule_id` until resumed; ticks
        in between are skipped. True if it was not paused already."""
        return await pausing.set_schedule(await self.connected_broker(), schedule_id, True)

    async def resume_schedule_async(self, schedule_id: str) -> bool:
        """Let the schedule `schedule_id` fire again. True if it was paused."""
        return await pausing.set_schedule(await self.connected_broker(), schedule_id, False)

    async def paused_async(self) -> pausing.Paused:
        """The paused queues and schedules, each with the time of its pause."""
        return await pausing.paused(await self.connected_broker())

    def pause(self, queue: str) -> bool:
        return self.portal.run(self.pause_async(queue))

    def resume(self, queue: str) -> bool:
        return self.portal.run(self.resume_async(queue))

    def pause_schedule(self, schedule_id: str) -> bool:
        return self.portal.run(self.pause_schedule_async(schedule_id))

    def resume_schedule(self, schedule_id: str) -> bool:
        return self.portal.run(self.resume_schedule_async(schedule_id))

    def paused(self) -> pausing.Paused:
        return self.portal.run(self.paused_async())

    # -- testing -----------------------------------------------------------------------

    def testing(
        self,
        url: str = "memory://",
        *,
        clock: FakeClock | None = None,
        raise_errors: bool = False,
        schedules: bool = True,
    ) -> InlineRunner:
        """Run this app's jobs inline, in the test's process, on a virtual clock:
        `with app.testing() as t: ...; t.drain(); t.advance(60)`. While open, the app
        uses a fresh broker at `url` and `clock`; see `offload.testing.InlineRunner`."""
        from offload.testing import InlineRunner

        return InlineRunner(
            self, url=url, clock=clock, raise_errors=raise_errors, schedules=schedules
        )

    # -- the connection (held by the producer) -----------------------------------------

    @property
    def url(self) -> str:
        return self.producer.url

    @property
    def clock(self) -> Clock:
        return self.producer.clock

    @property
    def broker(self) -> Broker:
        return self.producer.broker

    @broker.setter
    def broker(self, broker: Broker) -> None:
        self.producer.broker = broker

    @property
    def max_queue_depth(self) -> int | None:
        return self.producer.max_queue_depth

    @property
    def portal(self) -> Portal:
        return self.producer.portal

    async def connected_broker(self) -> Broker:
        """The broker, connected on first use (`Producer.connected_broker`)."""
        return await self.producer.connected_broker()

    async def aclose(self) -> None:
        """Close the broker (async code; `async with app:` calls it)."""
        await self.producer.aclose()

    async def __aenter__(self) -> Offload:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    def close(self) -> None:
        """Close the broker and the sync portal.

        A script need not call it: at interpreter exit the portal closes what the app
        opened (see `_portal.py`). Long-lived processes that drop apps should.
        """
        self.producer.close()
