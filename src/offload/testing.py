"""Testing code that uses offload: a virtual clock and an inline runner.

`FakeClock` replaces the system clock in brokers and workers, so tests move time
forward by hand instead of sleeping.

`InlineRunner` (`app.testing()`, or the `offload_runner` pytest fixture) points an app
at a fresh broker (`memory://` by default) and a `FakeClock` for the length of a test,
and runs the jobs it enqueues in the test's own process, one at a time, when the test
says so:

    with app.testing() as t:
        client.post("/signup", json={"email": "ada@example.com"})  # enqueues
        t.drain()                       # runs every job due now, and what they start
        t.advance(60)                   # moves the clock, running retries and delayed
                                        # jobs and schedule fires as they fall due
        assert [j.state for j in t.jobs(task=send_email)] == ["succeeded"]

Nothing here re-implements execution: jobs go through a real broker and the real
`Worker` (its `drain`), so retries, backoff, expiry, flow limits, workflows and the
scheduler behave as in production, only on virtual time.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Coroutine
from contextvars import Context
from datetime import datetime, timedelta
from functools import partial
from types import TracebackType
from typing import TYPE_CHECKING, Any

from offload._portal import Portal
from offload._redact import redact_url
from offload.envelope import ErrorInfo, JobState
from offload.errors import JobFailed
from offload.scheduler import Scheduler
from offload.worker import Worker
from offload.worker.executor import Executor, Outcome

if TYPE_CHECKING:
    from typing import Self

    from offload.app import Offload
    from offload.brokers.base import Broker, JobInfo, Lease
    from offload.envelope import Envelope
    from offload.task import Task

__all__ = ["FakeClock", "InlineRunner"]

_Traceback = TracebackType | None

#: `advance` and `run_all` stop with an error past this many clock steps (a job that
#: keeps re-scheduling itself, or a schedule firing every second for years).
MAX_STEPS = 100_000


class FakeClock:
    """A clock that only moves when told to. Thread-safe.

    Args:
        start: Unix seconds or an aware datetime (default: 2023-11-14 22:13:20 UTC).
    """

    def __init__(self, start: float | datetime = 1_700_000_000.0) -> None:
        self._now = start.timestamp() if isinstance(start, datetime) else float(start)
        self._lock = threading.Lock()

    def now(self) -> float:
        with self._lock:
            return self._now

    def advance(self, seconds: float) -> float:
        """Move forward by `seconds`; returns the new time."""
        with self._lock:
            self._now += seconds
            return self._now

    def set(self, now: float) -> None:
        with self._lock:
            self._now = now


class _RecordingExecutor(Executor):
    """The worker's executor, keeping the exception of each job it buries, so that a
    test can have it raised (`raise_errors`) rather than read back as text."""

    def __init__(self, app: Offload, *, worker_id: str, threads: int) -> None:
        super().__init__(app.find_task, app.broker, app.clock, worker_id=worker_id, threads=threads)
        self.buried: list[tuple[str, BaseException | None, ErrorInfo | None]] = []
        self._raised: dict[str, BaseException] = {}

    def _failed(
        self, exc: BaseException, lease: Lease, envelope: Envelope, task: Task[Any, Any]
    ) -> Outcome:
        self._raised[lease.job_id] = exc
        return super()._failed(exc, lease, envelope, task)

    async def execute(self, lease: Lease, envelope: Envelope | None = None) -> Outcome:
        return self._recorded(lease, await super().execute(lease, envelope))

    def run_in_thread(
        self, lease: Lease, envelope: Envelope, task: Task[Any, Any], context: Context
    ) -> tuple[Outcome, float]:
        outcome, duration_s = super().run_in_thread(lease, envelope, task, context)
        return self._recorded(lease, outcome), duration_s

    def _recorded(self, lease: Lease, outcome: Outcome) -> Outcome:
        raised = self._raised.pop(lease.job_id, None)
        if outcome.action == "bury":
            self.buried.append((lease.job_id, raised, outcome.error))
        return outcome


class InlineRunner:
    """Runs an app's jobs in this process, on a virtual clock, when a test asks.

    Made by `app.testing(...)`; use it as a context manager (`with`, or `async with`
    in async tests). While it is open the app enqueues to a fresh broker at `url` and
    reads the time from `clock`; on exit the app gets its own broker and clock back.
    Jobs run one at a time (concurrency 1), in enqueue order within a priority, so a
    test sees the same order every run.

    Sync methods run the jobs on an event loop of the runner's own, in a thread, as a
    worker runs them on its own loop: not on the app's portal loop, where an async
    handler's sync call (`other.enqueue(...)`, `job.state()`) would wait on the loop it
    runs on. Async tests use the `*_async` twins, which run on the test's own loop.

    Args:
        url: the broker to run on; `memory://` (default) is a complete broker in
            process memory, fresh for each runner.
        clock: the virtual clock (default: a new `FakeClock`).
        raise_errors: `drain`/`advance`/`run_all` re-raise the exception of the first
            job that went dead during the call (the job is dead all the same).
        schedules: fire the app's schedules (`app.schedule`) as the clock reaches
            them, as `offload worker --scheduler` would; False leaves them out.
    """

    def __init__(
        self,
        app: Offload,
        *,
        url: str = "memory://",
        clock: FakeClock | None = None,
        raise_errors: bool = False,
        schedules: bool = True,
    ) -> None:
        self.app = app
        self.url = url
        self.clock = clock or FakeClock()
        self.raise_errors = raise_errors
        self.schedules = schedules
        self._restore: Callable[[], None] | None = None
        self._workers: dict[asyncio.AbstractEventLoop, Worker] = {}
        self._scheduler: Scheduler | None = None
        self._loop = Portal()  # the sync methods' loop, started on first use

    def __repr__(self) -> str:
        return f"<InlineRunner {redact_url(self.url)} now={self.clock.now()}>"

    # -- open / close ------------------------------------------------------------------

    def __enter__(self) -> Self:
        self._open()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: _Traceback
    ) -> None:
        try:  # on the loop where the sync methods used the broker, if they ran
            (self._loop if self._loop.started else self.app.portal).run(self._close())
        finally:
            self._loop.close()

    async def __aenter__(self) -> Self:
        self._open()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: _Traceback
    ) -> None:
        await self._close()

    def _open(self) -> None:
        if self._restore is not None:
            raise RuntimeError("this InlineRunner is already open")
        self._restore = self.app.producer.rebind(self.url, self.clock)
        self._scheduler = Scheduler(self.app) if self.schedules else None

    async def _close(self) -> None:
        restore, self._restore = self._restore, None
        if restore is None:
            return
        try:
            for worker in self._workers.values():
                worker.executor.close()
            self._workers.clear()
            portal_broker = self.app.producer.portal_broker
            if portal_broker is not None:  # a loop-bound broker: closed on its own loop
                await self._on_portal(portal_broker.close())
            await self.app.aclose()
        finally:
            restore()

    async def _on_portal(self, coro: Coroutine[Any, Any, None]) -> None:
        """Await `coro` on the app's portal loop (from another loop, in a thread: the
        portal's loop may be waiting for this one)."""
        if self.app.portal.is_current():
            await coro
        else:
            await asyncio.to_thread(self.app.portal.run, coro)

    # -- running -----------------------------------------------------------------------

    def drain(self, *, raise_errors: bool | None = None) -> int:
        """Run every job due now, and the jobs they start (workflow steps, retries due
        at once), until none is ready; fire the schedules due now. Returns how many
        jobs ran. Jobs delayed or waiting for a retry stay until the clock reaches
        them (`advance`, `run_all`)."""
        return self._run_sync(self._run_due, raise_errors)

    async def drain_async(self, *, raise_errors: bool | None = None) -> int:
        """`drain` for async tests."""
        return await self._checked(self._run_due, raise_errors)

    def advance(self, seconds: float | timedelta, *, raise_errors: bool | None = None) -> int:
        """Move the clock `seconds` forward, stopping at each instant on the way where a
        job falls due or a schedule fires, and draining there (so a retry runs at its
        backoff time, and sees the time it would in production). Each stop also runs
        the broker's housekeeping (`sweep`: expiry, purge of finished jobs past their
        result TTL). Returns how many jobs ran."""
        return self._run_sync(self._advancing(seconds), raise_errors)

    async def advance_async(
        self, seconds: float | timedelta, *, raise_errors: bool | None = None
    ) -> int:
        """`advance` for async tests."""
        return await self._checked(self._advancing(seconds), raise_errors)

    def _advancing(self, seconds: float | timedelta) -> Callable[[], Coroutine[Any, Any, int]]:
        delta = seconds.total_seconds() if isinstance(seconds, timedelta) else float(seconds)
        if not delta >= 0:
            raise ValueError(f"advance() takes seconds >= 0, got {seconds!r}")
        return partial(self._steps_for, delta, until_idle=False)

    def run_all(
        self, *, within: float | timedelta = 7 * 86400.0, raise_errors: bool | None = None
    ) -> int:
        """Advance the clock from one waiting job to the next (retries, delayed jobs,
        schedule fires on the way) until no job waits, or `within` seconds have
        passed. The shortest way to "run everything, retries included". Returns how
        many jobs ran."""
        return self._run_sync(self._running_all(within), raise_errors)

    async def run_all_async(
        self, *, within: float | timedelta = 7 * 86400.0, raise_errors: bool | None = None
    ) -> int:
        """`run_all` for async tests."""
        return await self._checked(self._running_all(within), raise_errors)

    def _running_all(self, within: float | timedelta) -> Callable[[], Coroutine[Any, Any, int]]:
        span = within.total_seconds() if isinstance(within, timedelta) else float(within)
        return partial(self._steps_for, span, until_idle=True)

    # -- looking -----------------------------------------------------------------------

    def jobs(
        self,
        *,
        state: JobState | str | None = None,
        task: Task[Any, Any] | str | None = None,
        queue: str | None = None,
    ) -> list[JobInfo]:
        """The jobs in the broker (optionally of one state, task or queue), oldest
        first. A dead job's `error` holds the exception's type, message and traceback."""
        return self._loop.run(self.jobs_async(state=state, task=task, queue=queue))

    async def jobs_async(
        self,
        *,
        state: JobState | str | None = None,
        task: Task[Any, Any] | str | None = None,
        queue: str | None = None,
    ) -> list[JobInfo]:
        """`jobs` for async tests."""
        wanted = JobState(state) if state is not None else None
        name = task if task is None or isinstance(task, str) else task.name
        broker = await self._broker()
        found: list[JobInfo] = []
        cursor: str | None = None
        while True:
            page = await broker.list_jobs(queue=queue, state=wanted, limit=500, cursor=cursor)
            found.extend(j for j in page.items if name is None or j.task == name)
            cursor = page.cursor
            if cursor is None:
                break
        return sorted(found, key=lambda j: (j.created_at, j.id))

    # -- internals ---------------------------------------------------------------------

    async def _broker(self) -> Broker:
        if self._restore is None:
            raise RuntimeError("open the runner first: `with app.testing() as t:`")
        return await self.app.connected_broker()

    def _worker(self) -> Worker:
        """This loop's worker (asyncio objects belong to one loop, and a runner may be
        driven from its own loop and the test's)."""
        loop = asyncio.get_running_loop()
        worker = self._workers.get(loop)
        if worker is None:
            worker = Worker(self.app, concurrency=1, worker_id="inline")
            worker.executor.close()  # unused: its threads start lazily, none did
            worker.executor = _RecordingExecutor(self.app, worker_id=worker.id, threads=1)
            self._workers[loop] = worker
        return worker

    async def _queues(self, broker: Broker) -> list[str]:
        """Every queue: the app's, and any a job was sent to by name or option."""
        return sorted(set(self.app.queues()) | set(await broker.queues()))

    async def _run_due(self) -> int:
        """Fire the due schedules, then drain until a whole pass runs nothing (a job
        may enqueue into a queue the worker did not know yet)."""
        broker = await self._broker()
        if self._scheduler is not None and self.app.schedules:
            await self._scheduler.tick()
        worker = self._worker()
        ran = 0
        while True:
            worker.queues = await self._queues(broker)
            count = await worker.drain()
            ran += count
            if count == 0:
                return ran

    async def _steps_for(self, span_s: float, *, until_idle: bool) -> int:
        """`_steps` until `span_s` seconds from now (read when the run starts)."""
        return await self._steps(self.clock.now() + span_s, until_idle=until_idle)

    async def _steps(self, deadline: float, *, until_idle: bool) -> int:
        broker = await self._broker()
        ran = await self._run_due()
        for _ in range(MAX_STEPS):
            now = self.clock.now()
            due = await broker.next_due(await self._queues(broker))
            if until_idle and due is None:
                return ran
            fire = self._next_fire(now) if self._scheduler is not None else None
            events = [t for t in (due, fire) if t is not None and t > now]
            step = min([*events, deadline])
            if step <= now:
                return ran
            self.clock.set(step)
            await broker.sweep()
            ran += await self._run_due()
        raise RuntimeError(f"the clock made {MAX_STEPS} steps and jobs still fall due")

    def _next_fire(self, now: float) -> float | None:
        fires = [next(e.schedule.after(now)) for e in self.app.schedules.values()]
        return float(min(fires)) if fires else None

    def _run_sync(
        self, run: Callable[[], Coroutine[Any, Any, int]], raise_errors: bool | None
    ) -> int:
        """Run `run` on the runner's loop; raise the first job's death, if asked, here
        on the caller's thread: a handler's `SystemExit` or `KeyboardInterrupt` raised
        on that loop would stop it and leave the caller waiting forever."""
        ran, error = self._loop.run(self._recorded(run, raise_errors))
        if error is not None:
            raise error
        return ran

    async def _checked(
        self, run: Callable[[], Coroutine[Any, Any, int]], raise_errors: bool | None
    ) -> int:
        """Run `run`; then, if asked, raise the first job's death during it."""
        ran, error = await self._recorded(run, raise_errors)
        if error is not None:
            raise error
        return ran

    async def _recorded(
        self, run: Callable[[], Coroutine[Any, Any, int]], raise_errors: bool | None
    ) -> tuple[int, BaseException | None]:
        """Run `run`; how many jobs ran, and, if asked, the first job's death during it
        (its exception, else `JobFailed`), returned for the caller to raise."""
        await self._broker()  # raises if the runner is not open
        worker = self._worker()
        executor = worker.executor
        assert isinstance(executor, _RecordingExecutor)
        executor.buried.clear()
        ran = await run()
        if executor.buried and (self.raise_errors if raise_errors is None else raise_errors):
            job_id, raised, error = executor.buried[0]
            executor.buried.clear()
            return ran, raised if raised is not None else JobFailed(job_id, error)
        return ran, None
