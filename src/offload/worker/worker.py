"""The worker: reserve jobs in batches, run them, keep their leases, settle outcomes.

One asyncio loop per worker process. The fetch loop reserves up to the free capacity
(concurrency plus prefetch) in one broker call; each job runs as its own task. Side
tasks extend leases, heartbeat (register the worker), sweep, check for cancels, drain
the outbox and, with `scheduler=True`, tick the scheduler. Each runs in
`BrokerHealth.every`, which logs a failure and retries it with backoff, so a broker
outage or a failing sweep never stops the worker. Only something that is not an
`Exception` (a `KeyboardInterrupt`, a `SystemExit`) ends one; the worker then stops
rather than run on half-alive.

Every broker call of every loop survives the broker going away (a restart, a
failover, a connection cut): the loops share one `BrokerHealth` (`offload._health`),
which logs the outage once and its end once, and each loop retries with backoff. A
finished job's outcome is retried until the broker takes it, so an outage does not
make it run again.

Shutdown (`stop()`, SIGTERM): stop reserving at once, release prefetched jobs that
have not started so they run elsewhere at once, let running jobs finish within the
grace period (counted from the first `stop()`) while their leases keep being extended,
then stop the stragglers and give them back (the attempt counts) and close.

A job is never given back while this process may still run its handler, or another
worker could start it beside the one still running here. Async handlers are cancelled
and child processes killed before their jobs are given back; a sync handler in a thread
cannot be stopped at all, so with `hard_exit` (the CLI) the process ends at once
(`os._exit`) without giving those jobs back: their leases lapse (within `lease_s`) and
they run again elsewhere, as after a crash. Without `hard_exit` (a worker embedded in
another program) the worker waits for such handlers instead, leases extended.
On a broker whose leases lapse by themselves (SQS: `capabilities.lapsing_leases`) a
job whose lease cannot be extended in time is stopped before its deadline and never
settled, by the same rule (`lapses.py`).

Recycling (`max_jobs`, `max_memory_mb`; `recycling.py`): a worker past a limit stops
reserving and finishes its running jobs with no time limit; nothing is given back or
charged. Its `recycled` says why, and the CLI exits with `EXIT_RECYCLED` so that the
supervisor starts a fresh process at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import time
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING

from offload import attempts as history
from offload import validation
from offload._health import Attempts, BrokerHealth
from offload.brokers.base import Lease, Settlement, WorkerInfo
from offload.envelope import Envelope, ErrorInfo
from offload.errors import BrokerError, BrokerUnavailable, ConfigurationError, LeaseLost
from offload.hooks import OUTCOMES, Run
from offload.logging import job_log
from offload.pausing import PauseView
from offload.scheduler import MAX_SLEEP_S, Scheduler
from offload.worker.admission import Admission
from offload.worker.executor import Executor, Outcome, decoded
from offload.worker.lane import ThreadLane
from offload.worker.lapses import EXIT_LEASE_LAPSED, Lapses
from offload.worker.recycling import Recycling
from offload.worker.settler import Settlements, lease_fate
from offload.worker.shutdown import end_process, give_back
from offload.workflow_engine import WorkflowEngine

if TYPE_CHECKING:
    from offload.app import Offload
    from offload.brokers.base import Broker

__all__ = ["Worker"]

logger = logging.getLogger("offload.worker")

#: How often (seconds) the worker asks the broker whether its running async jobs were
#: cancelled: a cancelled job sees it within this period plus a round trip.
CANCEL_POLL_S = 0.5
#: How often a worker runs the workflow follow-ups of jobs that ended inside the broker
#: (cancelled while waiting, expired: `Broker.outbox`), in seconds.
OUTBOX_S = 1.0
#: Outbox entries handled per batch, and batches per call at most.
OUTBOX_BATCH = 200
OUTBOX_BATCHES = 50
#: Most running job ids a worker lists in its registration (`offload status`).
RUNNING_LISTED = 100
#: Past the grace period, how long cancelled async handlers get to unwind (seconds);
#: one still running then is treated as a handler that cannot be stopped.
UNWIND_S = 1.0


class Worker:
    """Runs the jobs of an `Offload` app.

    Args:
        queues: queues to take jobs from (default: the app's task queues).
        concurrency: jobs run at once (async on the loop, sync in threads).
        prefetch: jobs reserved beyond `concurrency`, waiting for a free slot.
        lease_s: visibility timeout; a job whose worker stops heartbeating runs
            again this long after the last heartbeat.
        grace_s: at shutdown, how long running jobs may take to finish.
        poll_s: longest idle wait between reservations when the broker cannot push.
        sweep_s: period of housekeeping (expiry, purge of finished jobs).
        scheduler: also enqueue the app's schedules (`offload.scheduler`), as a side
            task; safe in every worker at once.
        max_jobs: recycle after taking this many jobs (see the module docstring).
        max_memory_mb: recycle once the process's resident memory passes this, checked
            after each job.
        hard_exit: end the process (`os._exit`) when the grace period ends with sync
            handlers still running, instead of waiting for them; only for a process
            that exists to run this worker.
    """

    def __init__(
        self,
        app: Offload,
        *,
        queues: Sequence[str] | None = None,
        concurrency: int = 10,
        prefetch: int = 0,
        lease_s: float = 30.0,
        grace_s: float = 30.0,
        poll_s: float = 1.0,
        sweep_s: float = 10.0,
        worker_id: str | None = None,
        scheduler: bool = False,
        max_jobs: int | None = None,
        max_memory_mb: float | None = None,
        hard_exit: bool = False,
    ) -> None:
        if type(concurrency) is not int or concurrency < 1:
            raise ConfigurationError(f"concurrency must be an int >= 1, got {concurrency!r}")
        if type(prefetch) is not int or prefetch < 0:
            raise ConfigurationError(f"prefetch must be an int >= 0, got {prefetch!r}")
        lease_s = validation.seconds(lease_s, "lease", positive=True)
        grace_s = validation.seconds(grace_s, "grace")
        poll_s = validation.seconds(poll_s, "poll", positive=True)
        sweep_s = validation.seconds(sweep_s, "sweep", positive=True)
        self.app = app
        self.queues = [validation.queue_name(q) for q in queues] if queues else app.queues()
        self.concurrency = concurrency
        self.prefetch = prefetch
        self.lease_s = lease_s
        self.grace_s = grace_s
        self.poll_s = poll_s
        self.sweep_s = sweep_s
        self.id = worker_id or f"{socket.gethostname()}:{os.getpid()}:{os.urandom(3).hex()}"
        self.executor = Executor(
            app.find_task, app.broker, app.clock, worker_id=self.id, threads=concurrency
        )
        self.processed = 0
        self._buffer: deque[Lease] = deque()
        #: Jobs left waiting in `_buffer` when they were reserved (the prefetch): their
        #: expiry is checked again when they start (see `_start`).
        self._waited: set[str] = set()
        #: The fetch loop's task while it waits for work (`_interrupt_wait` ends it).
        self._waiting: asyncio.Task[None] | None = None
        self._running: dict[str, tuple[Lease, asyncio.Future[None]]] = {}
        self._settling: set[str] = set()  # in `_running`, handler returned: no slot held
        self.recycling = Recycling(max_jobs, max_memory_mb)
        self.recycled: str | None = None  # why it recycled itself; None if stopped
        self.hard_exit = hard_exit
        self._stopping = asyncio.Event()
        self._stop_asked = asyncio.Event()  # stop(), as opposed to recycling
        self._stop_asked_at = 0.0  # monotonic; the grace period counts from here
        self._capacity = asyncio.Event()
        self._forced = asyncio.Event()
        self._started_at = app.clock.now()
        self.settlements = Settlements(app.broker)
        limits = {n: t.defaults.limits for n, t in app.tasks.items() if t.defaults.limits}
        self.admission = Admission(
            limits, app.broker, app.clock, lease_s=lease_s, settle=self.settlements.settle
        )
        self.engine = WorkflowEngine(app.producer, app.broker, app.clock, clears_outbox=True)
        self._slots: dict[str, tuple[str, int]] = {}  # job id -> (slot key, its limit)
        self.scheduler = Scheduler(app) if scheduler else None
        # The probe writes: a broker that answers reads but refuses writes (a SQLite
        # file locked by another writer) is not back.
        self.health = BrokerHealth(logger, probe=self._heartbeat, on_failure=app.hooks.broker_error)
        self._lost: set[str] = set()  # jobs whose lost lease was reported
        caps = app.broker.capabilities
        self.lapses = Lapses(lease_s, app.clock) if caps.lapsing_leases else None
        # Paused queues (`offload.pausing`), read again before a reservation when older
        # than half a second; and for the health probes (`probes.py`): when the fetch
        # loop last made progress (monotonic) and `reserve` last answered (clock).
        self.pauses = PauseView()
        self.progress_at = time.monotonic()
        self.last_reserve_at: float | None = None
        self.lane = ThreadLane(self) if any(not t.is_async for t in app.tasks.values()) else None

    @property
    def broker(self) -> Broker:
        return self.app.broker

    # -- control -----------------------------------------------------------------------

    def stop(self, *, force: bool = False) -> None:
        """Ask the worker to shut down gracefully; `force` ends the grace period now.

        The grace period counts from the first call. Safe to call from a signal handler
        on the worker's loop.
        """
        if not self._stop_asked.is_set():
            self._stop_asked_at = time.monotonic()
            self._stop_asked.set()
        self.recycled = None  # a stop on request supersedes a recycle
        self._stopping.set()
        self._capacity.set()
        self._interrupt_wait()
        if force:
            self._forced.set()

    def _recycle(self, reason: str) -> None:
        """Stop taking jobs and finish the running ones, with no time limit."""
        if self._stopping.is_set():
            return
        self.recycled = reason
        logger.info("recycling: %s", reason, extra={"action": "recycling", "worker_id": self.id})
        self._stopping.set()
        self._capacity.set()
        self._interrupt_wait()

    def _interrupt_wait(self) -> None:
        """End the fetch loop's wait for work, if it waits (see `_reserve_or_wait`):
        once per wait. A second stop (a second signal) while the first still ends it
        would cancel its clean-up (what the broker handed over is given back) and
        leave a cancellation that nobody asked the task for."""
        if self._waiting is not None:
            self._waiting.cancel()
            self._waiting = None

    async def run(self) -> None:
        """Run until `stop()`; then shut down in order (see the module docstring)."""
        if not await self.health.reach(self.app.connected_broker, self._stopping):
            logger.info("worker %s stopped before its broker was reachable", self.id)
            return
        if self.scheduler is not None:  # a broker that cannot keep schedules: say so now
            await self.scheduler.check(await self.app.connected_broker())
        logger.info(
            "worker %s started: queues=%s concurrency=%d",
            self.id,
            ",".join(self.queues),
            self.concurrency,
            extra={"action": "worker_started", "worker_id": self.id},
        )
        if self.app.hooks:
            self.app.hooks.worker_started(self)
        loops: list[tuple[str, float, Callable[[], Awaitable[object]]]] = [
            ("extend", self.lease_s / 3, self.extend_leases),
            ("heartbeat", self.lease_s / 3, self._heartbeat),
            ("sweep", self.sweep_s, self.broker.sweep),
            ("cancel check", CANCEL_POLL_S, self.check_cancels),
            ("outbox drain", OUTBOX_S, self.drain_outbox),
        ]
        if self.scheduler is not None:
            loops.append(("scheduler tick", MAX_SLEEP_S, self.scheduler.tick))
        side_tasks = [
            asyncio.create_task(self.health.every(what, period, action, self._stopping), name=what)
            for what, period, action in loops
        ]
        fetcher = asyncio.create_task(self._fetch_loop(), name="fetch")
        keeper = asyncio.create_task(self._keep_leases_after_stop(), name="leases at stop")
        if self.lapses is not None:  # until the very end, as the keeper
            watch = self.lapses.watch(self._held, self._stop_lapsed)
            side_tasks.append(asyncio.create_task(watch, name="lease deadlines"))
        try:
            done, _ = await asyncio.wait(
                [fetcher, *side_tasks], return_when=asyncio.FIRST_COMPLETED
            )
            for task in done:
                if task is not fetcher and task.exception() is not None:
                    logger.error("side task %s died; stopping", task.get_name())
            if not self._stopping.is_set():  # else stopped or recycling already
                self.stop()
            await fetcher
            await self._shutdown()
        finally:
            for task in [*side_tasks, keeper]:
                task.cancel()
            await asyncio.gather(*side_tasks, keeper, return_exceptions=True)
            with contextlib.suppress(Exception):
                await self.broker.unregister_worker(self.id)
            self.executor.close()
            if self.app.hooks:
                self.app.hooks.worker_stopped(self)
            logger.info("worker %s stopped", self.id, extra={"action": "worker_stopped"})

    async def tick(self) -> int:
        """One reservation: lease up to the free capacity and start what fits.

        Returns how many jobs were reserved. Tests drive the worker with this.
        """
        free = self._room()
        if free <= 0 or self._stopping.is_set():
            return 0
        queues = await self.pauses.active(self.broker, self.queues)
        if not queues:  # all paused: nothing to take, and nothing wrong
            self.progress_at = time.monotonic()
            return 0
        leases = await self.broker.reserve(
            queues, worker_id=self.id, lease_s=self.lease_s, limit=free
        )
        self.progress_at = time.monotonic()
        self.last_reserve_at = self.app.clock.now()
        self._take(leases)
        return len(leases)

    def _take(self, leases: Sequence[Lease]) -> None:
        """Hold newly leased jobs and start what fits (none once stopping: the
        shutdown gives back what was not started)."""
        self.recycling.taken += len(leases)
        if self.lapses is not None:
            self.lapses.hold(leases)
        self._buffer.extend(leases)
        if not self._stopping.is_set():
            self._start_buffered()
        if self._buffer:
            self._waited.update(lease.job_id for lease in self._buffer)

    async def drain(self) -> int:
        """Run jobs until none is ready and none is running; returns how many ran.

        Delayed jobs that are not yet due are left alone. For tests and scripts.
        """
        before = self.processed
        self.pauses.forget()
        while True:
            reserved = await self.tick()
            if self._running:
                await asyncio.wait(
                    [t for _, t in self._running.values()], return_when=asyncio.FIRST_COMPLETED
                )
            elif reserved == 0 and not self._buffer and not await self.drain_outbox():
                return self.processed - before

    async def drain_outbox(self) -> int:
        """Run the workflow follow-ups of the jobs that ended inside the broker (see
        `WorkflowEngine.drain_outbox`), batch after batch while whole batches are handled (a
        storm of expiries), at most `OUTBOX_BATCHES` per call; returns how many were
        handled (entries whose follow-ups fail stay for the next call)."""
        total = 0
        for _ in range(OUTBOX_BATCHES):
            handled = await self.engine.drain_outbox(OUTBOX_BATCH)
            total += handled
            if handled < OUTBOX_BATCH:
                break
        return total

    # -- fetch loop --------------------------------------------------------------------

    async def _fetch_loop(self) -> None:
        attempts = Attempts()
        while not self._stopping.is_set():
            try:
                if attempts.failures:  # first our own leases, which a reserve could
                    await self.extend_leases()  # take back if they lapsed meanwhile
                asked = await self._fetch()
            except Exception as exc:
                self.health.failed("reserve", exc, recurring=True)
                await self.health.pause(attempts.next_delay(), self._stopping)
            else:
                attempts.reset()
                if asked:  # a turn that only waited for a slot, or the stop, proves nothing
                    await self.health.succeeded("reserve")

    async def _fetch(self) -> bool:
        """One turn of the fetch loop: wait for a free slot while none is, else reserve
        what fits, waiting for work if nothing is ready (every broker call may raise).
        Returns whether it asked the broker: only then may an outage end with it."""
        if self._full():
            self._capacity.clear()
            if self._full() and not self._stopping.is_set():  # stop() set it already
                await self._capacity.wait()
        elif not self._stopping.is_set():
            return await self._reserve_or_wait()
        return False

    def _full(self) -> bool:
        return self._room() <= 0 or self.recycling.took_all()

    def _room(self) -> int:
        """How many jobs to reserve now: the free capacity, except that a prefetch
        buffer is refilled only once it is half empty (the running jobs are fed from
        it meanwhile). Topping it up after every finished job cost one `reserve` per
        job; in halves, a reservation takes many jobs at once (issue 16)."""
        if self.prefetch > 1 and len(self._buffer) > self.prefetch // 2:
            return 0
        held = len(self._running) + len(self._buffer)
        return self.recycling.room(self.concurrency + self.prefetch - held)

    @property
    def stopping(self) -> bool:
        """Whether a stop was asked (SIGTERM): the worker takes no more jobs, only
        finishes its running ones (a recycle is not this: see `recycled`)."""
        return self._stop_asked.is_set()

    def saturated(self) -> bool:
        """Whether the fetch loop waits for a free slot (not stuck: every slot works)."""
        return self._full() and not self._stopping.is_set()

    def running_jobs(self) -> list[str]:
        """The ids of the jobs running now."""
        return list(self._running)

    async def _reserve_or_wait(self) -> bool:
        """Reserve what fits, or wait for work (`Delivery.wait_for_work`: until the next
        delayed job is due, `poll_s` at most, or the worker stops; the broker may hand
        over jobs already leased meanwhile). A stop cancels the wait (the broker gives
        back what it was handed); the call is awaited in this task, not raced against
        the stop in others, which would cost two more loop turns per job. After taking
        jobs it yields one loop turn, so they reach their handlers before this task
        builds and sends its next call (on Redis a script call: CPU time that every
        pick-up waited behind, issue 16). Returns whether the broker answered: not
        when the stop cut the call short (it may have been failing: an outage)."""
        timeout_s = self.poll_s
        queues = await self.pauses.active(self.broker, self.queues)
        if len(queues) < len(self.queues):  # notice a resume soon
            timeout_s = min(timeout_s, self.pauses.max_age_s)
        self.progress_at = time.monotonic()
        if self._stopping.is_set():
            return False
        task = asyncio.current_task()
        assert task is not None
        self._waiting = task
        try:
            if queues:
                leases = await self.broker.wait_for_work(
                    queues, timeout_s, worker_id=self.id, lease_s=self.lease_s, limit=self._room()
                )
            else:  # all paused: nothing to take, and nothing wrong
                await asyncio.sleep(timeout_s)
                leases = []
        except asyncio.CancelledError:
            if not self._stopping.is_set() or task.uncancel() > 0:
                raise  # not (only) our own interruption
            return False
        finally:
            self._waiting = None
        self.progress_at = time.monotonic()
        if queues:
            self.last_reserve_at = self.app.clock.now()
        self._take(leases)
        if leases:  # the jobs just started first, the next call after them
            await asyncio.sleep(0)
        return True

    def _start_buffered(self) -> None:
        """Start buffered jobs while there is a free slot; a job for the thread lane
        also while fewer than `concurrency` wait for a thread (see `lane.py`)."""
        lane = self.lane if self.lane is not None and self.lane.open() else None
        while self._buffer:
            busy = len(self._running) - len(self._settling)
            if busy >= self.concurrency and (
                lane is None
                or busy >= 2 * self.concurrency
                or not _queueable(lane, self._buffer[0])
            ):
                return
            lease = self._buffer.popleft()
            self._running[lease.job_id] = (lease, self._start(lease, lane))

    def _start(self, lease: Lease, lane: ThreadLane | None) -> asyncio.Future[None]:
        """Start a job: whole in a handler thread if it can (`lane.py`), else as a task;
        one that expired while it waited in the prefetch buffer is given back unrun."""
        envelope = task = None
        if lane is not None:
            envelope, task = lane.plan(lease)
        if lease.job_id in self._waited:
            self._waited.discard(lease.job_id)
            envelope = envelope if envelope is not None else decoded(lease)  # decoded once
            if self._expired(envelope):
                return asyncio.create_task(self._give_back_expired(lease))
        if lane is not None and envelope is not None and task is not None:
            return lane.start(lease, envelope, task)
        return asyncio.create_task(self._process(lease, envelope), name=f"job [{lease.job_id}]")

    def _expired(self, envelope: Envelope | None) -> bool:
        """Whether the job's `expires` passed: the broker checks it when it leases a
        job, but a job prefetched (`--prefetch`) may wait here past it, and ran anyway."""
        expires_at = envelope.expires_at if envelope is not None else None
        return expires_at is not None and expires_at <= self.app.clock.now()

    async def _give_back_expired(self, lease: Lease) -> None:
        """Release an expired job unrun (no attempt counted); the broker's next
        reservation marks it `expired` (and starts its workflow's follow-ups)."""
        try:
            await self.broker.release([lease])
            logger.info(
                "job %s: expired while it waited in this worker's prefetch; given back unrun",
                lease.job_id,
                extra={"action": "released", "job_id": lease.job_id},
            )
        except Exception:
            logger.warning(
                "job %s: expired unrun; the broker expires it once its lease lapses",
                lease.job_id,
                exc_info=True,
            )
        finally:
            self.ended(lease, ran=False)

    async def _process(self, lease: Lease, envelope: Envelope | None = None) -> None:
        ran = False
        try:
            if await self._admitted(lease):
                ran = True
                await self._run_job(lease, envelope)
        finally:
            if lease.job_id in self._slots:  # not held while its slot is given back
                self._running.pop(lease.job_id, None)
                await self._release_slot(lease.job_id)
            self.ended(lease, ran=ran)

    def ended(self, lease: Lease, *, ran: bool) -> None:
        """Forget a job that ended here (settled, or given up) and start the next."""
        self._running.pop(lease.job_id, None)
        self._settling.discard(lease.job_id)
        self._lost.discard(lease.job_id)
        if self.lapses is not None:
            self.lapses.forget(lease)
        self.processed += ran
        reason = self.recycling.reason(idle=not self._running and not self._buffer)
        if reason is not None:
            self._recycle(reason)
        if not self._stopping.is_set():
            self._start_buffered()
        self._capacity.set()

    async def _run_job(self, lease: Lease, envelope: Envelope | None = None) -> None:
        """Run one attempt, record its outcome, and report it to the job log and, if
        the app has any, to its hooks (`offload.hooks`)."""
        hooks = self.app.hooks
        now = self.app.clock.now()
        run = None
        if hooks:
            first = None
            if lease.attempt > 1 and hooks.links_attempts:
                first = await self._first_trace(lease)
            run = hooks.started(lease, decoded(lease), self.id, now, first)
        try:
            started = time.perf_counter()
            outcome = await self.executor.execute(lease, run.envelope if run else envelope)
            duration_s = time.perf_counter() - started
            self.handler_returned(lease.job_id)
            await self.conclude(lease, outcome, now, duration_s, run)
        finally:
            if run is not None:
                hooks.finished(run)

    async def conclude(
        self, lease: Lease, outcome: Outcome, now: float, duration_s: float, run: Run | None = None
    ) -> None:
        """Record a finished attempt's outcome (`_settle`), then report it to the job
        log and to the hooks' `run`, if any."""
        trace = run.first_trace if run is not None else None
        if outcome.action == "retry":
            outcome = await self._unless_cancelled(lease, outcome)
        recorded = await self._settle(lease, outcome, now, trace)
        delay_s = max(outcome.at - self.app.clock.now(), 0.0)
        job_log.finished(lease, outcome, duration_s, delay_s, recorded=recorded)
        if run is not None and recorded:
            run.outcome = OUTCOMES[outcome.action]
            run.error, run.delay_s, run.duration_s = outcome.error, delay_s, duration_s

    async def _unless_cancelled(self, lease: Lease, outcome: Outcome) -> Outcome:
        """A failed attempt of a job that `Job.cancel()` flagged while it ran ends
        `cancelled`, not retried: the cancel said True, so the job must not run again
        (a sync handler cannot be stopped, and its retry ran in full; an async one that
        failed before the worker's next check had its retry started, then stopped).
        If the broker cannot say now, the retry stands (it is checked again as it runs)."""
        try:
            flagged = lease.job_id in await self.broker.cancel_requested([lease])
        except Exception as exc:
            self.health.failed("reading a job's cancel flag", exc)
            return outcome
        if not flagged:
            return outcome
        failed = outcome.error
        reason = f"{failed.type}: {failed.message}" if failed is not None else "failed"
        error = ErrorInfo("Cancelled", f"cancelled while running; not retried after {reason}")
        return Outcome("cancel", outcome.envelope, error=error)

    def handler_returned(self, job_id: str) -> None:
        """The job's handler is done and only its settlement is left: its slot is free
        for the next job (`concurrency` bounds handlers running, not settlements in
        flight), so a handler thread does not idle through a broker round trip."""
        self._settling.add(job_id)
        if not self._stopping.is_set():
            self._start_buffered()

    async def _first_trace(self, lease: Lease) -> dict[str, str] | None:
        """The trace context of the job's first attempt, from its history
        (`offload.attempts.first_trace`); None if the broker cannot say now, or keeps
        no history (the attempt runs all the same, its span without that link)."""
        try:
            records, _ = await self.broker.attempt_records(lease.job_id)
        except ConfigurationError:  # no history is kept (RabbitMQ or SQS alone): none
            return None  # to link, as for an attempt 1 that left no record; no failure
        except Exception as exc:
            self.health.failed("reading a job's attempts", exc)
            return None
        return history.first_trace(records, lease.attempt)

    async def _admitted(self, lease: Lease) -> bool:
        """Pass the job's flow limits (see `admission.py`); False if it was deferred
        (or could not be checked, and runs again once its lease lapses)."""
        if not self.admission.active:
            return True
        try:
            verdict = await self.health.retry("flow limits", lambda: self.admission.admit(lease))
        except LeaseLost:
            return False
        except ConfigurationError as exc:
            # The broker cannot keep the limit (RabbitMQ or SQS without a state store):
            # no later check can pass, so the job is buried with the reason (replay it
            # once a store is set) instead of held unrun until its lease lapses, and
            # then again, for ever, with a traceback each time.
            error = ErrorInfo("ConfigurationError", str(exc))
            await self._bury_unrun(lease, error)
            return False
        except Exception:
            logger.exception("job %s: flow limits could not be checked", lease.job_id)
            return False
        if verdict.error is not None:
            error = ErrorInfo("InvalidLimitKey", f"a limit key function failed: {verdict.error}")
            await self._bury_unrun(lease, error)
        if verdict.slot is not None:
            self._slots[lease.job_id] = (verdict.slot, verdict.slot_limit)
        return verdict.run

    async def _bury_unrun(self, lease: Lease, error: ErrorInfo) -> None:
        """Bury a job that its limits keep from ever running, reported like any attempt
        that ended dead: the job log's ERROR line, the hooks' `on_dead` and `after_run`
        (so metrics count it, and Sentry hears of it). Settled silently, it was in the
        dead-letter queue and nowhere else. The envelope goes with the outcome, so the
        job's workflow hears of its end."""
        hooks = self.app.hooks
        envelope = decoded(lease)
        now = self.app.clock.now()
        run = hooks.started(lease, envelope, self.id, now) if hooks else None
        try:
            await self.conclude(lease, Outcome("bury", envelope, error=error), now, 0.0, run)
        finally:
            if run is not None:
                hooks.finished(run)

    async def _release_slot(self, job_id: str) -> None:
        held = self._slots.pop(job_id, None)
        if held is None:
            return
        slot = held[0]
        try:
            await self.broker.release_slot(slot, job_id)
        except BrokerUnavailable as exc:
            self.health.failed("slot release", exc)  # the slot frees when its TTL ends
        except Exception:
            logger.exception("job %s: its slot of %s frees when its TTL ends", job_id, slot)

    async def _settle(
        self,
        lease: Lease,
        outcome: Outcome,
        started_at: float | None = None,
        trace: dict[str, str] | None = None,
    ) -> bool:
        """Apply an outcome to the broker, retried while the broker is unavailable (the
        lease is extended meanwhile); a lost lease is logged, not raised. A failed
        attempt is recorded in the job's history first (`offload.attempts`), with
        `trace` (`Run.first_trace`). Returns whether the outcome was recorded."""
        task_name = outcome.envelope.task if outcome.envelope else "?"
        extra = {"job_id": lease.job_id, "task": task_name, "attempt": lease.attempt}
        record = None
        if outcome.action != "ack":
            record = self._attempt(lease, outcome, started_at, trace)

        async def settle() -> None:
            if self.lapses is not None and self.lapses.dropped(lease):
                raise LeaseLost(f"the lease on job {lease.job_id} lapsed")
            await self.engine.follow_up(
                lease, outcome.action, outcome.envelope, result=outcome.result, error=outcome.error
            )
            if record is not None:
                await self.broker.record_attempt(
                    lease.job_id, lease.token, record, keep=history.ATTEMPTS_KEPT
                )
            await self._apply(lease, outcome)

        try:
            await self.health.retry("recording an outcome", settle)
        except LeaseLost:
            if self.lapses is None or not self.lapses.dropped(lease):  # else said already
                await self.lease_lost(lease, "before its outcome was recorded")
        except Exception:
            logger.exception(
                "job %s: could not record its outcome; it runs again once its lease lapses",
                lease.job_id,
                extra={"action": "settle_failed", **extra},
            )
        else:
            return True
        return False

    def _attempt(
        self,
        lease: Lease,
        outcome: Outcome,
        started_at: float | None,
        trace: dict[str, str] | None,
    ) -> bytes:
        """The history record of an attempt that did not succeed."""
        results = {
            "retry": history.AttemptOutcome.RETRIED,
            "cancel": history.AttemptOutcome.CANCELLED,
        }
        attempt = history.Attempt(
            number=lease.attempt,
            outcome=results.get(outcome.action, history.AttemptOutcome.DEAD),
            worker_id=self.id,
            started_at=started_at,
            finished_at=self.app.clock.now(),
            error=outcome.error,
            trace=trace,
        )
        return history.encode(attempt)

    async def _apply(self, lease: Lease, outcome: Outcome) -> None:
        """Record the outcome (the job log reports it: `offload.logging.job_log`)."""
        if outcome.action == "ack":
            await self.settlements.settle(
                Settlement.ack(lease, outcome.result, result_ttl_s=outcome.result_ttl_s)
            )
            return
        error = outcome.error
        assert error is not None
        if outcome.action == "retry":
            await self.settlements.settle(Settlement.retry(lease, at=outcome.at, error=error))
        elif outcome.action == "cancel":
            await self.settlements.settle(Settlement.cancel(lease, error=error))
        else:
            await self.settlements.settle(Settlement.bury(lease, error=error))

    # -- side tasks --------------------------------------------------------------------

    async def check_cancels(self) -> None:
        """Cancel the running async jobs that `Job.cancel()` flagged (see executor.py),
        and the flagged jobs not started yet, waiting in the prefetch buffer or for a
        handler thread (the thread lane queues some): the broker sees those as running
        (so `cancel` only flags them), yet they have not started, and without this a
        sync one ran in full after its cancel said True."""
        running = self._running
        ids = [*self.executor.cancellable(), *self.executor.waiting_for_thread()]
        leases = [running[i][0] for i in ids if i in running]
        leases += self._buffer
        if not leases:
            return
        flagged = await self.broker.cancel_requested(leases)
        for lease in leases:
            if lease.job_id not in flagged:
                continue
            if lease in self._buffer:  # still unstarted (the call above let others run)
                self._buffer.remove(lease)
                self._waited.discard(lease.job_id)
                await self._cancel_unstarted(lease)
            elif self.executor.cancel(lease.job_id):
                logger.info("job %s: cancel requested; stopping it", lease.job_id)
            elif (entry := running.get(lease.job_id)) is not None and entry[0] is lease:
                if self.executor.take_back(lease.job_id):  # no thread had taken it
                    await self._cancel_unstarted(lease)

    async def _cancel_unstarted(self, lease: Lease) -> None:
        """End a job that was cancelled before it started here, unrun."""
        logger.info("job %s: cancelled before it started; not run", lease.job_id)
        error = ErrorInfo("Cancelled", "cancelled before it started")
        try:
            await self._settle(lease, Outcome("cancel", decoded(lease), error=error))
        finally:
            self.ended(lease, ran=False)

    async def extend_leases(self) -> None:
        """Heartbeat: push every held lease's deadline forward. A lease the broker
        refuses is reported only if the job may really run twice (see `lease_lost`)."""
        held = self._held()
        if not held:
            return
        if self._slots:
            await self._renew_slots()
        asked_at = self.app.clock.now()
        answers = await self.broker.extend(held, self.lease_s)
        if self.lapses is not None:
            self.lapses.extended(held, answers, asked_at)
        dropped: list[Lease] = []
        for lease, ok in zip(held, answers, strict=True):
            if ok:
                continue
            if lease in self._buffer:  # not started here: dropping it is all it takes
                self._buffer.remove(lease)
                self._waited.discard(lease.job_id)
                dropped.append(lease)
                if self.lapses is not None:
                    self.lapses.forget(lease)
                logger.debug("job %s: reserved but taken back before it started", lease.job_id)
            elif (entry := self._running.get(lease.job_id)) is None or entry[0] is not lease:
                continue
            elif self.lapses is not None:
                self._stop_lapsed(lease, "the broker refused to extend its lease")
            else:
                await self.lease_lost(lease, "while it runs")
        if dropped:  # so the broker forgets them too (RabbitMQ: none is taken for a run
            with contextlib.suppress(BrokerError):  # of this process if delivered again)
                await self.broker.release(dropped)

    def _held(self) -> list[Lease]:
        """Every lease this worker holds: running jobs, then unstarted ones."""
        return [lease for lease, _ in self._running.values()] + list(self._buffer)

    def _stop_lapsed(self, lease: Lease, why: str) -> None:
        """Give up a job whose lease lapses by itself (see `lapses.py`): never settle it,
        and stop its handler before the broker hands it to another worker, or end the
        process (`hard_exit`) when the handler cannot be stopped."""
        assert self.lapses is not None
        if not self.lapses.drop(lease):
            return
        extra = {"action": "lease_lapsed", "job_id": lease.job_id, "attempt": lease.attempt}
        if lease in self._buffer:
            self._buffer.remove(lease)
            self._waited.discard(lease.job_id)
            self.lapses.forget(lease)
            logger.info("job %s: %s; not started here", lease.job_id, why, extra=extra)
            return
        entry = self._running.get(lease.job_id)
        if entry is None or entry[0] is not lease:
            return
        if self.executor.stop_in_threads([lease.job_id]):
            logger.error(
                "job %s: %s, and its sync handler cannot be stopped; its outcome is dropped "
                "and it runs again elsewhere",
                lease.job_id,
                why,
                extra=extra,
            )
            if self.hard_exit:
                end_process(1, self.lease_s, self.id, code=EXIT_LEASE_LAPSED)
            return
        logger.warning(
            "job %s: %s; stopped, it runs again once the broker hands it out",
            lease.job_id,
            why,
            extra=extra,
        )
        entry[1].cancel()
        self.executor.kill_child(lease.job_id)  # after the cancel: nothing settles it

    async def lease_lost(self, lease: Lease, when: str) -> None:
        """Warn that a job may run twice, once per job, if it may: the broker refusing
        a lease is not proof (the job's own outcome may have landed first, or a retried
        outcome's first try), so the job's record decides (`lease_fate`)."""
        if lease.job_id in self._lost:
            return
        try:
            fate: str | None = await lease_fate(self.broker, lease)
        except Exception:
            fate = "the broker no longer holds its lease"
        if fate is None:
            logger.debug("job %s: lease refused, but it ended under that lease", lease.job_id)
            return
        self._lost.add(lease.job_id)
        logger.warning(
            "job %s: lease lost %s (%s); it may run twice",
            lease.job_id,
            when,
            fate,
            extra={"action": "lease_lost", "job_id": lease.job_id, "attempt": lease.attempt},
        )

    async def _renew_slots(self) -> None:
        """Push the TTL of every held concurrency slot forward, with the leases."""
        slots = list(self._slots.items())
        renewed = await asyncio.gather(
            *(
                self.broker.acquire_slot(key, limit=limit, holder=job_id, ttl_s=self.lease_s)
                for job_id, (key, limit) in slots
            ),
            return_exceptions=True,
        )
        for (job_id, (key, _)), ok in zip(slots, renewed, strict=True):
            if isinstance(ok, BrokerUnavailable):
                self.health.failed("slot renewal", ok)
            elif isinstance(ok, BaseException):
                logger.error("job %s: slot %s not renewed", job_id, key, exc_info=ok)
            elif not ok:
                logger.warning("job %s: its slot of %s was lost", job_id, key)

    async def _heartbeat(self) -> None:
        info = WorkerInfo(
            id=self.id,
            hostname=socket.gethostname(),
            pid=os.getpid(),
            queues=self.queues,
            concurrency=self.concurrency,
            started_at=self._started_at,
            running=len(self._running),
            processed=self.processed,
            extra={
                "last_reserve_at": self.last_reserve_at,
                "running_jobs": self.running_jobs()[:RUNNING_LISTED],
            },
        )
        await self.broker.register_worker(info, ttl_s=self.lease_s)

    # -- shutdown ----------------------------------------------------------------------

    async def _shutdown(self) -> None:
        unstarted = list(self._buffer)
        self._buffer.clear()
        self._waited.clear()
        for job_id in self.executor.withdraw():  # queued for a thread, not taken
            if (entry := self._running.pop(job_id, None)) is not None:
                unstarted.append(entry[0])
        if unstarted:
            await self.broker.release(unstarted)
            logger.info("released %d unstarted jobs", len(unstarted), extra={"action": "released"})
        if not self._running:
            return
        if not self._stop_asked.is_set():
            logger.info("waiting for %d running jobs before recycling", len(self._running))
        else:
            logger.info(
                "waiting up to %.0f s for %d running jobs", self.grace_s, len(self._running)
            )
        tasks = [t for _, t in self._running.values()]
        grace = asyncio.create_task(self._grace_over())
        finished = asyncio.create_task(asyncio.wait(tasks))  # cancelling it spares the jobs
        try:
            await asyncio.wait([finished, grace], return_when=asyncio.FIRST_COMPLETED)
            pending = {t for t in tasks if not t.done()}
            if pending:
                await self._abandon(pending)
        finally:
            for helper in (grace, finished):
                helper.cancel()

    async def _grace_over(self) -> None:
        """Returns when the grace period that the first `stop()` started is over, or at
        once on `stop(force=True)`; never while only recycling."""
        await self._stop_asked.wait()
        left = self._stop_asked_at + self.grace_s - time.monotonic()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._forced.wait(), max(left, 0.0))

    async def _keep_leases_after_stop(self) -> None:
        """From the stop to the end of the shutdown, extend every held lease every
        `lease_s / 3`: the side tasks end at the stop, while the fetch loop may still be
        finishing a reservation and the running jobs have their grace period. A lease
        that lapsed here would let another worker start a job that still runs."""
        await self._stopping.wait()
        me = asyncio.current_task()
        while True:
            with contextlib.suppress(Exception):
                await self.extend_leases()
            # A cancellation that arrived inside the broker call may come out of a client
            # library as an ordinary error, suppressed above: without this check the loop
            # went on and `run()` waited for it forever (seen as a worker whose stop
            # never returned, issue 16).
            if me is not None and me.cancelling():
                return
            await asyncio.sleep(self.lease_s / 3)

    async def _abandon(self, pending: set[asyncio.Future[None]]) -> None:
        """Past the grace period: stop what can be stopped and give it back to run
        again now; never give back a job whose handler may still run in this process
        (see the module docstring). Leases stay extended until the end."""
        now = self.app.clock.now
        held = [(lease, task) for lease, task in self._running.values() if task in pending]
        in_threads = self.executor.stop_in_threads([lease.job_id for lease, _ in held])
        stoppable = [(lease, task) for lease, task in held if lease.job_id not in in_threads]
        for _, task in stoppable:
            task.cancel()
        self.executor.kill_children()  # after the cancel, so no one settles them as failed
        if stoppable:
            await asyncio.wait([task for _, task in stoppable], timeout=UNWIND_S)
        stuck = [(lease, task) for lease, task in held if not task.done()]
        try:
            await give_back(
                self.broker, [lease for lease, t in stoppable if t.done()], now(), self.id
            )
        finally:
            if stuck and self.hard_exit:
                end_process(len(stuck), self.lease_s, self.id)
        if stuck:
            logger.warning(
                "%d running jobs cannot be stopped (sync handlers in threads, or async ones "
                "that ignore cancellation); waiting for them",
                len(stuck),
            )
            await asyncio.wait([task for _, task in stuck])
            await give_back(
                self.broker,
                [lease for lease, t in stoppable if (lease, t) in stuck],
                now(),
                self.id,
            )


def _queueable(lane: ThreadLane, lease: Lease) -> bool:
    """Whether a job may wait for a handler thread in the lane's queue (see `lane.py`):
    one that can expire waits in the buffer instead, where `Worker._start` looks at its
    expiry again when it starts (a thread would run it however late)."""
    envelope, task = lane.plan(lease)
    return task is not None and envelope is not None and envelope.expires_at is None
