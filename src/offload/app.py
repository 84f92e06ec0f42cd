"""`Offload`: the task registry, configuration, and the producer side.

One `Offload` object is passed around explicitly (there is no global app); a process
may hold several, each with its own broker.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable, Sequence
from dataclasses import replace
from datetime import timedelta
from typing import TYPE_CHECKING, Any, ParamSpec, TypeVar, overload

from offload import pausing, validation
from offload._portal import Portal
from offload._redact import redact_url
from offload.brokers import from_url
from offload.brokers.base import Broker, TransactionalEnqueue
from offload.clock import Clock, SystemClock
from offload.envelope import Backoff, Envelope, new_job_id
from offload.errors import ConfigurationError, UnknownTask
from offload.job import Job
from offload.limits import make_limits
from offload.retry import DEFAULT_BACKOFF, RetryPolicy
from offload.task import Call, Enqueuer, KeySpec, Overrides, Task, TaskOptions

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
        self.max_queue_depth = _depth(max_queue_depth, "max_queue_depth")
        self.url = url or os.environ.get("OFFLOAD_URL") or DEFAULT_URL
        self.clock: Clock = clock or SystemClock()
        self.default_queue = validation.queue_name(queue)
        self.broker: Broker = from_url(self.url, clock=self.clock)
        self.tasks: dict[str, Task[Any, Any]] = {}
        self.schedules: dict[str, ScheduleEntry] = {}
        self.portal = Portal(on_exit=self._close_brokers)
        self._connected = False
        # A loop-bound broker (Capabilities.loop_bound) cannot serve the sync portal's
        # loop and the caller's (a worker's) at once: the portal gets its own instance.
        self._portal_broker: Broker | None = None
        # A task not registered in this process: route it by the app's default queue
        # and leave attempts, timeout and result TTL to the worker's task definition.
        self._unknown_task_defaults = TaskOptions(queue=queue, max_attempts=0, result_ttl_s=None)

    def __repr__(self) -> str:
        return f"<Offload {redact_url(self.broker.url)} tasks={len(self.tasks)}>"

    # -- registry ----------------------------------------------------------------------

    @overload
    def task(self, fn: Callable[P, R]) -> Task[P, R]: ...

    @overload
    def task(
        self,
        *,
        name: str | None = None,
        queue: str | None = None,
        priority: int = 0,
        max_attempts: int = 5,
        backoff: Backoff = DEFAULT_BACKOFF,
        retry_on: tuple[type[BaseException], ...] = (Exception,),
        give_up_on: tuple[type[BaseException], ...] = (),
        timeout: float | timedelta | None = None,
        expires: float | timedelta | None = None,
        result_ttl: float | timedelta | None = 24 * 3600.0,
        rate_limit: str | None = None,
        rate_key: Callable[..., str] | None = None,
        concurrency_limit: int | None = None,
        concurrency_key: Callable[..., str] | None = None,
        max_depth: int | None = None,
    ) -> Callable[[Callable[P, R]], Task[P, R]]: ...

    def task(
        self,
        fn: Callable[..., Any] | None = None,
        *,
        name: str | None = None,
        queue: str | None = None,
        priority: int = 0,
        max_attempts: int = 5,
        backoff: Backoff = DEFAULT_BACKOFF,
        retry_on: tuple[type[BaseException], ...] = (Exception,),
        give_up_on: tuple[type[BaseException], ...] = (),
        timeout: float | timedelta | None = None,
        expires: float | timedelta | None = None,
        result_ttl: float | timedelta | None = 24 * 3600.0,
        rate_limit: str | None = None,
        rate_key: Callable[..., str] | None = None,
        concurrency_limit: int | None = None,
        concurrency_key: Callable[..., str] | None = None,
        max_depth: int | None = None,
    ) -> Task[Any, Any] | Callable[[Callable[..., Any]], Task[Any, Any]]:
        """Register a function as a task (`@app.task` or `@app.task(...)`).

        Args:
            name: defaults to `module.qualname`; give a stable name if the function may
                move, since queued jobs refer to it by name.
            max_attempts: total runs including the first (1 = never retry).
            backoff: retry delays `base_s * 2**(attempt-1)`, capped at `cap_s`, full
                jitter (defaults: 1 s, 300 s, on).
            retry_on / give_up_on: exception types that retry / bury at once.
            timeout: stop an attempt after this long (sync handlers then run in a
                child process, the only way to really stop them).
            expires: a job not started this long after its enqueue never runs.
            result_ttl: keep a succeeded job and its result this long.
            rate_limit: at most this many starts per period across all workers:
                `"10/s"`, `"600/m"`, `"1000/h"` (a burst of the count when idle).
            rate_key: one rate limit per key computed from each job's arguments
                (e.g. `lambda *a, **kw: kw["provider"]`), instead of one per task.
            concurrency_limit: at most this many jobs running at once, fleet-wide.
            concurrency_key: one concurrency limit per key from the arguments.
            max_depth: enqueue raises `QueueFull` past this many waiting jobs in the
                task's queue (overrides the app's `max_queue_depth`).

        Raises:
            ConfigurationError: a bad option, or the name is already taken.
        """
        flow = functools.partial(
            make_limits,
            rate_limit=rate_limit,
            rate_key=rate_key,
            concurrency_limit=concurrency_limit,
            concurrency_key=concurrency_key,
        )
        max_depth = _depth(max_depth, "max_depth")
        options = TaskOptions(
            queue=self.default_queue if queue is None else validation.queue_name(queue),
            priority=validation.priority(priority),
            max_attempts=validation.attempts(max_attempts),
            backoff=validation.backoff(backoff),
            timeout_s=validation.duration(timeout, "timeout", positive=True),
            expires_s=validation.duration(expires, "expires", positive=True),
            result_ttl_s=validation.duration(result_ttl, "result_ttl"),
            retry=RetryPolicy(retry_on=retry_on, give_up_on=give_up_on),
            max_depth=max_depth,
        )
        flow("?")  # bad options fail here, before a function is given

        def register(f: Callable[..., Any]) -> Task[Any, Any]:
            task_name = validation.task_name(name or f"{f.__module__}.{f.__qualname__}")
            if task_name in self.tasks:
                raise ConfigurationError(f"a task named {task_name!r} is already registered")
            limits = flow(task_name)
            registered = Task(self, f, task_name, replace(options, limits=limits))
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
            self,
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

    def options(self, name: str, **options: Any) -> Enqueuer[Any]:
        """`Task.options` by task name."""
        task = self.tasks.get(name)
        if task is not None:
            return task.options(**options)
        from offload.task import make_overrides

        return Enqueuer(self, name, make_overrides(**options))

    def job(self, job_id: str) -> Job:
        """A handle on an existing job (no broker call is made)."""
        return Job(self, job_id)

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

    def _enqueue_sync(self, name: str, calls: Sequence[Call], overrides: Overrides) -> list[Job]:
        return self._send_sync(name, self._items(name, calls, overrides))

    def _send_sync(self, name: str, items: list[tuple[Envelope, bytes]]) -> list[Job]:
        """Send checked, encoded envelopes (`_items`) from synchronous code."""
        broker = self._portal_broker or self.broker
        if broker.capabilities.blocking_enqueue and not self.portal.is_current():
            results = broker.enqueue_blocking(items, max_depth=self._max_depth(name))
            if results is not None:  # else the broker leaves it to `enqueue`
                return [Job(self, r.id, created=r.created) for r in results]
        return self.portal.run(self._enqueue_items(name, items))

    async def _enqueue(self, name: str, calls: Sequence[Call], overrides: Overrides) -> list[Job]:
        return await self._enqueue_items(name, self._items(name, calls, overrides))

    async def _enqueue_items(self, name: str, items: list[tuple[Envelope, bytes]]) -> list[Job]:
        if not items:
            return []
        broker = await self.connected_broker()
        results = await broker.enqueue(items, max_depth=self._max_depth(name))
        return [Job(self, r.id, created=r.created) for r in results]

    def _max_depth(self, name: str) -> int | None:
        task = self.tasks.get(name)
        max_depth = task.defaults.max_depth if task is not None else None
        return self.max_queue_depth if max_depth is None else max_depth

    async def _enqueue_envelopes(self, envelopes: Sequence[Envelope]) -> list[Job]:
        """Enqueue prepared envelopes, of any tasks, in one broker call (workflows)."""
        items = [validation.checked(e) for e in envelopes]  # all, before any broker call
        broker = await self.connected_broker()
        results = await broker.enqueue(items, max_depth=self.max_queue_depth)
        return [Job(self, r.id, created=r.created) for r in results]

    def _items(
        self, name: str, calls: Sequence[Call], overrides: Overrides
    ) -> list[tuple[Envelope, bytes]]:
        """Checked, encoded envelopes: everything an enqueue sends to the broker. The
        whole batch is checked before the broker sees any of it (all or nothing)."""
        task = self.tasks.get(name)
        defaults = task.defaults if task is not None else None
        now = self.clock.now()
        items = []
        for call in calls:
            if task is not None:
                task.check_arguments(call.args, call.kwargs)
            envelope = self._envelope(name, call, defaults, call.overrides or overrides, now)
            items.append(validation.checked(envelope))
        return items

    def _enqueue_in(
        self, connection: Any, name: str, calls: Sequence[Call], overrides: Overrides
    ) -> list[Job]:
        """Enqueue on the application's synchronous connection, in its transaction."""
        results = self._transactional().enqueue_in_sync(
            connection, self._items(name, calls, overrides)
        )
        return [Job(self, r.id, created=r.created) for r in results]

    async def _enqueue_in_async(
        self, connection: Any, name: str, calls: Sequence[Call], overrides: Overrides
    ) -> list[Job]:
        """Enqueue on the application's async connection, in its transaction."""
        items = self._items(name, calls, overrides)
        results = await self._transactional().enqueue_in(connection, items)
        return [Job(self, r.id, created=r.created) for r in results]

    def _transactional(self) -> TransactionalEnqueue:
        broker = self.broker
        if broker.capabilities.transactional_enqueue and isinstance(broker, TransactionalEnqueue):
            return broker
        raise ConfigurationError(
            f"the broker {redact_url(broker.url)!r} cannot enqueue inside your transaction: "
            "use a postgresql:// broker, or enqueue after your commit"
        )

    def _envelope(
        self, name: str, call: Call, defaults: TaskOptions | None, o: Overrides, now: float
    ) -> Envelope:
        """Build one job. Routing (queue, priority) and time (delay, expiry) are fixed
        here; attempts, backoff, timeout and result TTL travel only when overridden, so
        the worker's task definition stays the source of truth (max_attempts is also
        copied when known, for inspection)."""
        not_before = o.at if o.at is not None else (now + o.delay_s if o.delay_s else None)
        expires_s = o.expires_s
        if expires_s is None and defaults is not None:
            expires_s = defaults.expires_s
        if o.expires_at is not None:
            expires_at: float | None = o.expires_at
        else:
            expires_at = now + expires_s if expires_s is not None else None
        priority = o.priority
        if priority is None:
            priority = defaults.priority if defaults is not None else 0
        return Envelope(
            id=new_job_id(),
            task=name,
            args=list(call.args),
            kwargs=call.kwargs,
            queue=o.queue or (defaults.queue if defaults is not None else self.default_queue),
            priority=priority,
            max_attempts=o.max_attempts or (defaults.max_attempts if defaults else None),
            backoff=o.backoff,
            not_before=not_before,
            expires_at=expires_at,
            key=_key(o.key, call),
            timeout_s=o.timeout_s,
            created_at=now,
        )

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

    def _rebind(self, url: str, clock: Clock) -> Callable[[], None]:
        """Point the app at a new broker for `url` and at `clock` (for `testing`);
        returns the function that gives it its own back. The caller closes the new
        broker before calling it."""
        saved = (self.url, self.clock, self.broker, self._connected, self._portal_broker)
        self.url, self.clock = url, clock
        self.broker = from_url(url, clock=clock)
        self._connected, self._portal_broker = False, None

        def restore() -> None:
            self.url, self.clock, self.broker, self._connected, self._portal_broker = saved

        return restore

    # -- lifecycle ---------------------------------------------------------------------

    async def connected_broker(self) -> Broker:
        """The broker, connected on first use.

        On the sync portal's loop a loop-bound broker is a second instance of the same
        URL, so that sync producers and an async worker may share this app.
        """
        if self.broker.capabilities.loop_bound and self.portal.is_current():
            if self._portal_broker is None:
                self._portal_broker = from_url(self.url, clock=self.clock)
            await self._portal_broker.connect()  # idempotent
            return self._portal_broker
        if not self._connected:
            await self.broker.connect()
            self._connected = True
        return self.broker

    async def aclose(self) -> None:
        """Close the broker (async code; `async with app:` calls it)."""
        if self._connected:
            self._connected = False
            await self.broker.close()

    async def __aenter__(self) -> Offload:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    def close(self) -> None:
        """Close the broker and the sync portal.

        A script need not call it: at interpreter exit the portal closes what the app
        opened (see `_portal.py`). Long-lived processes that drop apps should.
        """
        if self.portal.started or self._connected:
            self.portal.run(self._close_brokers())
        self.portal.close()

    async def _close_brokers(self) -> None:
        """Close the portal's broker and the app's (run on the portal loop)."""
        portal_broker, self._portal_broker = self._portal_broker, None
        if portal_broker is not None:
            await portal_broker.close()
        await self.aclose()


def _depth(value: int | None, what: str) -> int | None:
    if value is not None and (type(value) is not int or value < 1):
        raise ConfigurationError(f"{what} must be an int >= 1 or None, got {value!r}")
    return value


def _key(spec: KeySpec | None, call: Call) -> str | None:
    if spec is None or isinstance(spec, str):
        return spec
    return validation.job_key(spec(*call.args, **call.kwargs), "the key function's result")
