"""Plain-function jobs run whole in a handler thread: no asyncio task per job (issue 16).

A `def` handler used to run inside a job task on the loop like an `async def` one: the
task decoded the job, handed the call to a thread, woke again for its result, built
the outcome and awaited its settlement. On a worker with 8 threads doing I/O, that
per-job loop work (a task, several futures and callbacks, about 60 µs) and the GIL
hand-offs it costs (every thread waiting for the GIL queues behind the loop and the
loop behind them) made the loop the bottleneck: Huey's threads, which do nothing but
pop and run, kept pace with it.

Here the loop only decodes a job, sees that its task can run whole in a thread
(`Executor.threadable`: a plain function, no timeout, no workflow after it), and
queues it for a handler thread with a bare future standing for it in the worker's
`_running` (what shutdown, `drain` and the lease keeper see). The thread checks the
arguments, runs the handler in the job's context, encodes the result or decides the
retry, and hands the outcome back; every outcome finished meanwhile comes back in one
loop turn (`threads.py`). An ack joins the worker's group commit (`Settlements.add`)
with a callback instead of a waiting task, and the job is done when the batch is
durable. Anything else takes the worker's one-job path (`Worker.conclude`: attempt
history, retries while the broker is away, a lost lease reported), as does an ack
whose batch failed. Up to `concurrency` more jobs than there are threads wait in the
threads' queue (`Worker._start_buffered`), so a thread that finishes one takes the
next without waiting for the loop; a stopping worker takes back those no thread took
(`HandlerThreads.withdraw`) and releases them with its prefetch buffer.

The lane is open only while nothing needs the job task: no hooks, no flow limits, and
leases that do not lapse by themselves (`lapses.py` stops a job through its task).
Everything else about a `def` handler is unchanged: it runs in one of `concurrency`
threads, its job is cancelled before a thread takes it at shutdown and given back, it
is never given back while it runs (`Executor.stop_in_threads`), and its slot is free for
the next job as soon as it returns (`Worker.handler_returned`).
"""

from __future__ import annotations

import asyncio
import functools
import logging
from typing import TYPE_CHECKING, Any, Protocol

from offload.brokers.base import Settlement
from offload.logging import job_log
from offload.worker.executor import decoded

if TYPE_CHECKING:
    from offload.app import Offload
    from offload.brokers.base import Lease
    from offload.envelope import Envelope
    from offload.hooks import Run
    from offload.task import Task
    from offload.worker.admission import Admission
    from offload.worker.executor import Executor, Outcome
    from offload.worker.lapses import Lapses
    from offload.worker.settler import Settlements

__all__ = ["Host", "ThreadLane"]

logger = logging.getLogger("offload.worker")


class Host(Protocol):
    """What the lane uses of its worker (`offload.worker.worker.Worker`)."""

    app: Offload
    executor: Executor
    admission: Admission
    lapses: Lapses | None
    settlements: Settlements

    async def conclude(
        self, lease: Lease, outcome: Outcome, now: float, duration_s: float, run: Run | None = None
    ) -> None: ...

    def ended(self, lease: Lease, *, ran: bool) -> None: ...

    def handler_returned(self, job_id: str) -> None: ...

    async def lease_lost(self, lease: Lease, when: str) -> None: ...


class ThreadLane:
    """The worker's path for jobs run whole in a handler thread (module docstring)."""

    def __init__(self, worker: Host) -> None:
        self._worker = worker
        self._concluding: set[asyncio.Task[None]] = set()
        self._planned: tuple[Lease, Envelope | None, Task[Any, Any] | None] | None = None

    def open(self) -> bool:
        """Whether jobs may take the lane now (nothing needs a task per job)."""
        worker = self._worker
        return not worker.app.hooks and not worker.admission.active and worker.lapses is None

    def plan(self, lease: Lease) -> tuple[Envelope | None, Task[Any, Any] | None]:
        """The job's envelope (None: undecodable) and its task if it takes the lane
        (`Executor.threadable`), else None; the last job's answer is remembered (the
        worker asks about the head of its buffer, then starts it)."""
        if self._planned is None or self._planned[0] is not lease:
            envelope = decoded(lease)
            task = self._worker.executor.threadable(envelope) if envelope is not None else None
            self._planned = (lease, envelope, task)
        return self._planned[1], self._planned[2]

    def start(self, lease: Lease, envelope: Envelope, task: Task[Any, Any]) -> asyncio.Future[None]:
        """Queue a `threadable` job for a handler thread; the future ends once its
        outcome is recorded (or given up), and cancelling it before a thread takes the
        job means it never runs."""
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        now = self._worker.app.clock.now()
        done = functools.partial(self._returned, lease, future, now)
        self._worker.executor.submit_whole(lease, envelope, task, future, done)
        return future

    def _returned(
        self,
        lease: Lease,
        future: asyncio.Future[None],
        now: float,
        value: tuple[Outcome, float] | None,
        error: BaseException | None,
    ) -> None:
        worker = self._worker
        worker.handler_returned(lease.job_id)
        if value is None:  # `run_in_thread` never raises: a fault of the worker's own
            logger.error("job %s: its run failed in the worker", lease.job_id, exc_info=error)
            self._end(lease, future)
            return
        outcome, duration_s = value
        if outcome.action != "ack":
            self._conclude(lease, future, outcome, now, duration_s, None)
            return
        item = Settlement.ack(lease, outcome.result, result_ttl_s=outcome.result_ttl_s)
        settled = functools.partial(self._settled, lease, future, outcome, now, duration_s)
        worker.settlements.add(item, settled)

    def _settled(
        self,
        lease: Lease,
        future: asyncio.Future[None],
        outcome: Outcome,
        now: float,
        duration_s: float,
        held: bool | Exception,
    ) -> None:
        if held is True:
            job_log.finished(lease, outcome, duration_s, 0.0, recorded=True)
            self._end(lease, future)
        else:
            self._conclude(lease, future, outcome, now, duration_s, held)

    def _conclude(
        self,
        lease: Lease,
        future: asyncio.Future[None],
        outcome: Outcome,
        now: float,
        duration_s: float,
        held: bool | Exception | None,
    ) -> None:
        """The one-job path, in a task: a lost lease reported, or the outcome recorded
        by `Worker.conclude` (not tried yet, or its batch failed: tried again, and
        again while the broker is away)."""

        async def conclude() -> None:
            try:
                if held is False:
                    await self._worker.lease_lost(lease, "before its outcome was recorded")
                else:
                    await self._worker.conclude(lease, outcome, now, duration_s)
            finally:
                self._end(lease, future)

        task = asyncio.create_task(conclude(), name=f"job [{lease.job_id}] outcome")
        self._concluding.add(task)
        task.add_done_callback(self._concluding.discard)

    def _end(self, lease: Lease, future: asyncio.Future[None]) -> None:
        self._worker.ended(lease, ran=True)
        if not future.done():
            future.set_result(None)
