"""Run one leased job and decide its outcome; the worker applies it to the broker.

Async handlers run on the event loop, plain functions in a thread pool, and plain
functions with a timeout in a child process (the only way to really stop them).

Cancelling a running job (`Job.cancel()`): the worker polls the broker for the flag
(`Broker.cancel_requested`, every `CANCEL_POLL_S`) and cancels an async handler's
asyncio task, so it sees `CancelledError` at its next await; the job ends `cancelled`
(a `cancel` settlement). A sync handler cannot be interrupted safely: it runs to
completion and its outcome is recorded as usual (the flag stays visible in
`JobInfo.cancel_requested`), except that a flagged job's failure is not retried: the
worker ends it `cancelled` (`Worker.conclude`). A job that cannot be decoded or names
an unknown task is buried with that reason; it never crashes the worker.

Whatever a handler raises ends its own job only: a `BaseException` such as
`SystemExit` (`sys.exit()`), `KeyboardInterrupt`, `GeneratorExit` or a class of the
user's is carried out of the handler as an ordinary failure (`_Escaped`) before asyncio
or the thread pool can let it take the worker down, and the task's retry policy
decides (the default `retry_on=(Exception,)` does not retry it). Only a cancellation
that the worker or `Job.cancel()` caused stays a cancellation.

At shutdown the worker asks which handlers it cannot stop (`stop_in_threads`: sync ones
in threads) and kills the child processes of the others (`kill_children`).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextvars
import functools
import logging
import time
import traceback
from collections.abc import Callable, Coroutine, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import msgspec

from offload._redact import redact
from offload.codec import decode_envelope
from offload.context import JobContext, _current, _reporters
from offload.envelope import Envelope, ErrorInfo, type_path
from offload.errors import InvalidArguments, JobTimeout, SerializationError
from offload.validation import value_bytes
from offload.worker.processes import ProcessRunner, RemoteError
from offload.worker.threads import Done, HandlerThreads

if TYPE_CHECKING:
    from offload.brokers.base import Broker, Lease
    from offload.clock import Clock
    from offload.task import Task

__all__ = ["Executor", "Outcome", "decoded"]

logger = logging.getLogger("offload.worker")

#: A future whose cancellation stops a job before a thread takes it.
Guard = asyncio.Future[Any]


#: A sync handler's `progress()` waits at most this long (seconds) for the broker.
PROGRESS_TIMEOUT_S = 30.0


def _on_loop(loop: asyncio.AbstractEventLoop) -> bool:
    try:
        return asyncio.get_running_loop() is loop
    except RuntimeError:
        return False


class _CancelRequested(Exception):
    """The handler's task was cancelled because its job was cancelled."""


class _Escaped(Exception):
    """A `BaseException` that is not an `Exception` (`SystemExit`, `KeyboardInterrupt`,
    `GeneratorExit`, ...) raised by a handler, carried as an `Exception` so that it
    fails its job instead of stopping the event loop or the worker."""

    def __init__(self, original: BaseException) -> None:
        super().__init__(repr(original))
        self.original = original


def _contained_sync(fn: Callable[..., Any], args: list[Any], kwargs: dict[str, Any]) -> Any:
    """Run a sync handler (in a thread); a cancellation it raises is its own (no loop
    runs here), and would otherwise read as the worker cancelling the job."""
    try:
        return fn(*args, **kwargs)
    except (concurrent.futures.CancelledError, StopIteration) as exc:  # no future takes
        raise _Escaped(exc) from None  # a StopIteration (PEP 479)
    except Exception:
        raise
    except BaseException as exc:
        raise _Escaped(exc) from None


async def _contained(coro: Coroutine[Any, Any, Any]) -> Any:
    try:
        return await coro
    except (Exception, asyncio.CancelledError):
        raise
    except BaseException as exc:
        raise _Escaped(exc) from None


@dataclass(frozen=True, slots=True)
class Outcome:
    """What to do with a finished attempt: `ack`, `retry` (at `at`), `bury`, or
    `cancel` (stopped on request)."""

    action: str
    envelope: Envelope | None = None
    result: bytes | None = None
    at: float = 0.0
    error: ErrorInfo | None = None
    result_ttl_s: float | None = None


def decoded(lease: Lease) -> Envelope | None:
    """The lease's envelope, or None if it cannot be decoded (`execute` buries it)."""
    try:
        return decode_envelope(lease.payload)
    except Exception:
        return None


def error_info(exc: BaseException) -> ErrorInfo:
    """The stored record of an exception (type, message, traceback, class path).

    Its message and traceback are scrubbed of credentials (`redact`): a handler's error
    often names the URL it failed to reach, password and all, and the record is kept
    in the broker and shown by `offload show`, `offload dlq list`, the dashboard and
    `JobFailed.error`, where the worker's log line already showed it scrubbed."""
    if isinstance(exc, RemoteError):
        message, tb = str(exc), exc.remote_traceback
        return ErrorInfo(exc.type_name, redact(message), redact(tb), exc.type_path)
    tb = "".join(traceback.format_exception(exc))
    return ErrorInfo(type(exc).__qualname__, redact(str(exc)), redact(tb), type_path(type(exc)))


class Executor:
    """Runs one leased job: decodes it, finds its task, runs the handler where it
    belongs, and says what to do with the attempt (`Outcome`).

    Args:
        find_task: the task a job names (`Offload.find_task`), or None.
        broker: where progress reports go (`set_progress`).
        clock: time source for retry times.
    """

    def __init__(
        self,
        find_task: Callable[[str], Task[Any, Any] | None],
        broker: Broker,
        clock: Clock,
        *,
        worker_id: str,
        threads: int,
    ) -> None:
        self.find_task = find_task
        self.broker = broker
        self.clock = clock
        self.worker_id = worker_id
        self._threads = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="offload-job")
        self._handler_threads = HandlerThreads(threads, name="offload-handler")
        self._processes = ProcessRunner()
        self._handlers: dict[str, asyncio.Task[Any]] = {}  # job tasks of async handlers
        self._cancelled: dict[str, int] = {}  # job id -> cancels of its task by `cancel`
        self._latest: dict[str, bytes] = {}  # progress not sent yet, by job id
        self._senders: dict[str, asyncio.Task[None]] = {}  # progress sent in the background
        self._loop: asyncio.AbstractEventLoop | None = None  # the worker's, once it runs

    def cancellable(self) -> list[str]:
        """Ids of the jobs whose (async) handler can be cancelled now."""
        return list(self._handlers)

    def cancel(self, job_id: str) -> bool:
        """Cancel the async handler of `job_id`; False if none is running."""
        handler = self._handlers.get(job_id)
        if handler is None or handler.done():
            return False
        self._cancelled[job_id] = self._cancelled.get(job_id, 0) + 1  # `_call_async` takes
        handler.cancel()  # each of them back
        return True

    def stop_in_threads(self, job_ids: Iterable[str]) -> set[str]:
        """Of `job_ids`, the jobs whose sync handler runs in a thread now: nothing stops
        such a handler but its return or the end of the process, so the worker must not
        give its job back while the process lives (see `Worker`). Those still waiting
        for a thread are cancelled and will not run. One step (`HandlerThreads.stop`):
        a look at the running set, then a cancel, left a thread time to take the job
        in between and run it after it was given back."""
        return self._handler_threads.stop(job_ids)

    def waiting_for_thread(self) -> list[str]:
        """Ids of the jobs queued for a handler thread that none has taken yet."""
        return self._handler_threads.queued()

    def take_back(self, job_id: str) -> bool:
        """Cancel job `job_id` if it still waits for a handler thread (it will never
        run here); False if a thread took it or it does not wait for one."""
        return self._handler_threads.take_back(job_id)

    def withdraw(self) -> list[str]:
        """Ids of the jobs queued for a handler thread that none has taken, taken back:
        they will not run here (a stopping worker releases them)."""
        return self._handler_threads.withdraw()

    def kill_child(self, job_id: str) -> bool:
        """Kill the child process running job `job_id`'s handler, if one does (its
        lease lapsed: `offload.worker.lapses`)."""
        return self._processes.kill(job_id)

    def kill_children(self) -> None:
        """Kill the child processes running handlers now, and start no more: their
        handlers stop at once (shutdown past the grace period)."""
        self._processes.halt()

    def close(self) -> None:
        self._threads.shutdown(wait=False, cancel_futures=True)
        self._handler_threads.close()
        self._processes.close()

    async def execute(self, lease: Lease, envelope: Envelope | None = None) -> Outcome:
        """Run the leased job once; never raises (except on cancellation). `envelope`:
        the payload already decoded, if the caller did."""
        if envelope is None:
            try:
                envelope = decode_envelope(lease.payload)
            except Exception as exc:
                error = ErrorInfo("Undecodable", f"undecodable payload: {exc}")
                return Outcome("bury", error=error)
        task = self.find_task(envelope.task)
        if task is None:
            message = f"no task named {envelope.task!r} is registered in this worker"
            return Outcome("bury", envelope, error=ErrorInfo("UnknownTask", message))
        refused = _refused(lease, envelope, task)
        if refused is not None:
            return refused
        return await self._run(lease, envelope, task)

    def threadable(self, envelope: Envelope) -> Task[Any, Any] | None:
        """The task of a job that `run_in_thread` can run whole: a plain function with
        no timeout (a timeout needs a child process) and no workflow after it."""
        task = self.find_task(envelope.task)
        if task is None or task.is_async or envelope.has_follow_ups:
            return None
        if envelope.timeout_s is not None or task.defaults.timeout_s is not None:
            return None
        return task

    def submit_whole(
        self, lease: Lease, envelope: Envelope, task: Task[Any, Any], guard: Guard, done: Done
    ) -> None:
        """Run a `threadable` job in a handler thread from start to end (`run_in_thread`),
        then `done((outcome, seconds), None)` on the loop; nothing if `guard` is
        cancelled before a thread takes the job."""
        self._loop = asyncio.get_running_loop()
        call = functools.partial(
            self.run_in_thread, lease, envelope, task, contextvars.copy_context()
        )
        self._handler_threads.run(lease.job_id, call, guard, done)

    def run_in_thread(
        self,
        lease: Lease,
        envelope: Envelope,
        task: Task[Any, Any],
        context: contextvars.Context,
    ) -> tuple[Outcome, float]:
        """`execute` of a `threadable` job, run in a handler thread from start to end
        (see `submit_whole`): the outcome and the handler's time in seconds. The job's
        context is `context` (copied on the loop). Never raises."""
        refused = _refused(lease, envelope, task)
        if refused is not None:
            return refused, 0.0
        ctx = self._context(lease, envelope, task, None)
        _reporters[envelope.id] = self._report
        started = time.perf_counter()
        try:
            value = context.run(_as_job, ctx, task.fn, envelope.args, envelope.kwargs)
        except _Escaped as exc:
            return self._failed(exc.original, lease, envelope, task), time.perf_counter() - started
        except Exception as exc:
            return self._failed(exc, lease, envelope, task), time.perf_counter() - started
        finally:
            _reporters.pop(envelope.id, None)
        duration_s = time.perf_counter() - started
        return self._succeeded(lease, envelope, task, value), duration_s

    def _context(
        self, lease: Lease, envelope: Envelope, task: Task[Any, Any], timeout_s: float | None
    ) -> JobContext:
        return JobContext(
            id=envelope.id,
            task=envelope.task,
            queue=envelope.queue,
            attempt=lease.attempt,
            max_attempts=_max_attempts(envelope, task),
            key=envelope.key,
            created_at=envelope.created_at,
            deadline=self.clock.now() + timeout_s if timeout_s is not None else None,
            worker_id=self.worker_id,
            failures=tuple(envelope.failures or ()),
        )

    async def _run(self, lease: Lease, envelope: Envelope, task: Task[Any, Any]) -> Outcome:
        timeout_s = (
            envelope.timeout_s if envelope.timeout_s is not None else task.defaults.timeout_s
        )
        ctx = self._context(lease, envelope, task, timeout_s)
        self._loop = asyncio.get_running_loop()
        _reporters[envelope.id] = self._report
        try:
            value = await self._call(task, envelope, ctx, timeout_s)
        except _CancelRequested:
            error = ErrorInfo("Cancelled", "cancelled while running")
            return Outcome("cancel", envelope, error=error)
        except _Escaped as exc:
            return self._failed(exc.original, lease, envelope, task)
        except Exception as exc:
            return self._failed(exc, lease, envelope, task)
        finally:
            _reporters.pop(envelope.id, None)
        return self._succeeded(lease, envelope, task, value)

    def _succeeded(
        self, lease: Lease, envelope: Envelope, task: Task[Any, Any], value: Any
    ) -> Outcome:
        try:
            result = value_bytes(value, f"the result of task {envelope.task!r}")
        except Exception as exc:
            return self._failed(exc, lease, envelope, task)
        ttl = envelope.result_ttl_s
        return Outcome(
            "ack", envelope, result, result_ttl_s=task.defaults.result_ttl_s if ttl is None else ttl
        )

    async def _call(
        self, task: Task[Any, Any], env: Envelope, ctx: JobContext, timeout_s: float | None
    ) -> Any:
        if task.is_async:
            return await self._call_async(task, env, ctx, timeout_s)
        loop = asyncio.get_running_loop()
        if timeout_s is not None:
            return await loop.run_in_executor(
                self._threads, self._processes.run, task.fn, env.args, env.kwargs, ctx, timeout_s
            )
        context = contextvars.copy_context()
        call = functools.partial(context.run, _as_job, ctx, task.fn, env.args, env.kwargs)
        return await self._handler_threads.submit(env.id, call)

    def _report(self, job_id: str, value: Any) -> None:
        """`JobContext.progress` of this worker's jobs (one bound method for all, not a
        closure per job): stores the report through the broker, from the loop (in the
        background, latest report first out) or from a handler thread (waiting)."""
        loop = self._loop
        assert loop is not None  # set before any job runs
        data = value_bytes(value, "a progress report")
        if not _on_loop(loop):
            future = asyncio.run_coroutine_threadsafe(self.broker.set_progress(job_id, data), loop)
            future.result(timeout=PROGRESS_TIMEOUT_S)
            return
        self._latest[job_id] = data
        if job_id not in self._senders:
            self._senders[job_id] = loop.create_task(self._send_progress(job_id))

    async def _send_progress(self, job_id: str) -> None:
        """Send a job's reports one at a time, so the last one stored is the last one
        made; reports made meanwhile collapse into the newest."""
        try:
            while (data := self._latest.pop(job_id, None)) is not None:
                await self.broker.set_progress(job_id, data)
        except Exception:
            logger.warning("job %s: progress report failed", job_id, exc_info=True)
        finally:
            self._senders.pop(job_id, None)

    async def _call_async(
        self, task: Task[Any, Any], env: Envelope, ctx: JobContext, timeout_s: float | None
    ) -> Any:
        """Run the handler in the job's own task (no task of its own: one task, future
        and several loop callbacks fewer per job, issue 16). `cancel` cancels that
        task, and the cancellation it caused is taken back here (`Task.uncancel`) and
        ends the job `cancelled`; one that someone else also asked for (the worker's
        shutdown) goes on."""
        job_task = asyncio.current_task()
        assert job_task is not None
        token = _current.set(ctx)
        self._handlers[env.id] = job_task
        try:
            coro = _contained(task.fn(*env.args, **env.kwargs))
            # No wait_for without a timeout: one coroutine fewer per job.
            return await (coro if timeout_s is None else asyncio.wait_for(coro, timeout_s))
        except TimeoutError as exc:
            raise JobTimeout(f"task {env.task!r} ran past its timeout of {timeout_s} s") from exc
        except asyncio.CancelledError as exc:
            if _take_back(job_task, self._cancelled.pop(env.id, 0)):
                raise _CancelRequested() from None
            if job_task.cancelling():
                raise  # the worker cancels this job's task (shutdown)
            raise _Escaped(exc) from None  # the handler's own doing: its failure
        finally:
            _current.reset(token)
            self._handlers.pop(env.id, None)
            _take_back(job_task, self._cancelled.pop(env.id, 0))  # the handler ignored them

    def _failed(
        self, exc: BaseException, lease: Lease, envelope: Envelope, task: Task[Any, Any]
    ) -> Outcome:
        error = error_info(exc)
        if isinstance(exc, SerializationError):
            return Outcome("bury", envelope, error=error)
        decision = task.defaults.retry.decide(
            exc,
            attempt=lease.attempt,
            max_attempts=_max_attempts(envelope, task),
            backoff=envelope.backoff or task.defaults.backoff,
        )
        if decision.delay_s is None:
            return Outcome("bury", envelope, error=_with_reason(error, decision.reason))
        return Outcome("retry", envelope, at=self.clock.now() + decision.delay_s, error=error)


def _refused(lease: Lease, envelope: Envelope, task: Task[Any, Any]) -> Outcome | None:
    """The burial of an attempt that must not run: past its attempts (an earlier
    worker was lost) or with arguments that never bind; None if it may run."""
    max_attempts = _max_attempts(envelope, task)
    if lease.attempt > max_attempts:
        message = (
            f"attempt {lease.attempt} exceeds max_attempts={max_attempts}: "
            "an earlier attempt's worker was lost (crashed, killed, or stalled past its lease)"
        )
        return Outcome("bury", envelope, error=ErrorInfo("WorkerLost", message))
    try:
        task.check_arguments(envelope.args, envelope.kwargs)
    except InvalidArguments as exc:  # retrying cannot fix a call that never binds
        return Outcome("bury", envelope, error=ErrorInfo("InvalidArguments", str(exc)))
    return None


def _as_job(
    ctx: JobContext, fn: Callable[..., Any], args: list[Any], kwargs: dict[str, Any]
) -> Any:
    """A sync handler's call inside its job's context (run in a copied `Context`)."""
    _current.set(ctx)
    return _contained_sync(fn, args, kwargs)


def _take_back(task: asyncio.Task[Any], cancels: int) -> bool:
    """Undo `cancels` cancellations of `task` (`Task.uncancel`); True if there were
    some and none is left (nobody else cancelled it)."""
    left = task.cancelling()
    for _ in range(cancels):
        left = task.uncancel()
    return cancels > 0 and left == 0


def _max_attempts(envelope: Envelope, task: Task[Any, Any]) -> int:
    """The envelope's own limit, else the task's (a producer that enqueued by name
    without the task registered leaves it to the worker)."""
    if envelope.max_attempts is not None:
        return envelope.max_attempts
    return task.defaults.max_attempts


def _with_reason(error: ErrorInfo, reason: str) -> ErrorInfo:
    if not error.message or error.message == reason:
        return msgspec.structs.replace(error, message=reason)
    return msgspec.structs.replace(error, message=f"{reason}: {error.message}")
