"""Run one leased job and decide its outcome; the worker applies it to the broker.

Async handlers run on the event loop, plain functions in a thread pool, and plain
functions with a timeout in a child process (the only way to really stop them). A
job that cannot be decoded or names an unknown task is buried with that reason; it
never crashes the worker.
"""

from __future__ import annotations

import asyncio
import contextvars
import traceback
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from offload.codec import decode_envelope, encode_value
from offload.context import JobContext, _current
from offload.errors import InvalidArguments, JobTimeout, SerializationError
from offload.job import Envelope, ErrorInfo
from offload.worker.processes import ProcessRunner, RemoteError

if TYPE_CHECKING:
    from offload.app import Offload
    from offload.brokers.base import Lease
    from offload.task import Task

__all__ = ["Executor", "Outcome"]


@dataclass(frozen=True, slots=True)
class Outcome:
    """What to do with a finished attempt: `ack`, `retry` (at `at`) or `bury`."""

    action: str
    envelope: Envelope | None = None
    result: bytes | None = None
    at: float = 0.0
    error: ErrorInfo | None = None
    result_ttl_s: float | None = None


def error_info(exc: BaseException) -> ErrorInfo:
    """The stored record of an exception (type, message, traceback)."""
    if isinstance(exc, RemoteError):
        return ErrorInfo(exc.type_name, str(exc), exc.remote_traceback)
    tb = "".join(traceback.format_exception(exc))
    return ErrorInfo(type(exc).__qualname__, str(exc), tb)


class Executor:
    def __init__(self, app: Offload, *, worker_id: str, threads: int) -> None:
        self.app = app
        self.worker_id = worker_id
        self._threads = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="offload-job")
        self._processes = ProcessRunner()

    def close(self) -> None:
        self._threads.shutdown(wait=False, cancel_futures=True)
        self._processes.close()

    async def execute(self, lease: Lease) -> Outcome:
        """Run the leased job once; never raises (except on cancellation)."""
        try:
            envelope = decode_envelope(lease.payload)
        except Exception as exc:
            return Outcome("bury", error=ErrorInfo("Undecodable", f"undecodable payload: {exc}"))
        task = self.app.tasks.get(envelope.task)
        if task is None:
            message = f"no task named {envelope.task!r} is registered in this worker"
            return Outcome("bury", envelope, error=ErrorInfo("UnknownTask", message))
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
        return await self._run(lease, envelope, task)

    async def _run(self, lease: Lease, envelope: Envelope, task: Task[Any, Any]) -> Outcome:
        now = self.app.clock.now()
        timeout_s = (
            envelope.timeout_s if envelope.timeout_s is not None else task.defaults.timeout_s
        )
        ctx = JobContext(
            id=envelope.id,
            task=envelope.task,
            queue=envelope.queue,
            attempt=lease.attempt,
            max_attempts=_max_attempts(envelope, task),
            key=envelope.key,
            created_at=envelope.created_at,
            deadline=now + timeout_s if timeout_s is not None else None,
            worker_id=self.worker_id,
        )
        try:
            value = await self._call(task, envelope, ctx, timeout_s)
            result = encode_value(value, what=f"the result of task {envelope.task!r}")
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
            token = _current.set(ctx)
            try:
                return await asyncio.wait_for(task.fn(*env.args, **env.kwargs), timeout_s)
            except TimeoutError as exc:
                raise JobTimeout(
                    f"task {env.task!r} ran past its timeout of {timeout_s} s"
                ) from exc
            finally:
                _current.reset(token)
        loop = asyncio.get_running_loop()
        if timeout_s is not None:
            return await loop.run_in_executor(
                self._threads, self._processes.run, task.fn, env.args, env.kwargs, ctx, timeout_s
            )
        context = contextvars.copy_context()
        context.run(_current.set, ctx)
        return await loop.run_in_executor(
            self._threads, lambda: context.run(task.fn, *env.args, **env.kwargs)
        )

    def _failed(
        self, exc: Exception, lease: Lease, envelope: Envelope, task: Task[Any, Any]
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
        return Outcome("retry", envelope, at=self.app.clock.now() + decision.delay_s, error=error)


def _max_attempts(envelope: Envelope, task: Task[Any, Any]) -> int:
    """The envelope's own limit, else the task's (a producer that enqueued by name
    without the task registered leaves it to the worker)."""
    if envelope.max_attempts is not None:
        return envelope.max_attempts
    return task.defaults.max_attempts


def _with_reason(error: ErrorInfo, reason: str) -> ErrorInfo:
    if not error.message or error.message == reason:
        return ErrorInfo(error.type, reason, error.traceback)
    message = f"{reason}: {error.message}"
    return ErrorInfo(error.type, message, error.traceback)
