"""The worker's side of a Django task: the offload handler that runs its function.

It sends Django's `task_started` and `task_finished` signals around the call, passes a
`TaskContext` to tasks that take one, normalises the return value as Django's own
backends do (`normalize_json`: a value Django could not store fails the attempt with
`TypeError`), and, for sync tasks, cleans up Django's database connections of the
worker thread before and after, as Django does around a request.

`task_finished` is sent once per job, when its outcome is final: on success, or on a
failure that offload will not retry (a retried attempt leaves the job READY). For an
async task the receivers run in a thread (`asyncio.to_thread`), as sync code may: never
on the worker's loop, and never waiting for the main thread, which `Signal.asend` would;
the database connections of that thread are cleaned up around them, as for sync tasks,
and so are those of asgiref's thread, where an async task's ORM calls run.
"""

from __future__ import annotations

import asyncio
import contextvars
import inspect
from collections.abc import Callable
from datetime import UTC, datetime
from traceback import format_exception
from typing import TYPE_CHECKING, Any

from asgiref.sync import sync_to_async
from django.db import close_old_connections
from django.dispatch import Signal
from django.tasks import Task, TaskContext, TaskResultStatus
from django.tasks.base import TaskError
from django.tasks.signals import task_finished, task_started
from django.utils.json import normalize_json

from offload.context import current_job
from offload.contrib.django.results import OffloadTaskResult
from offload.envelope import JobState, type_path

if TYPE_CHECKING:
    from offload.app import Offload

__all__ = ["make_handler"]


def make_handler(app: Offload, task: Task, alias: str, sender: type) -> Callable[..., Any]:
    """The offload handler of `task`: typed with its function's signature (less the
    context), so offload checks the arguments of every enqueue at the producer."""
    func = task.func
    name = task.module_path
    params = list(inspect.signature(func).parameters.values())
    signature = inspect.Signature(params[1:] if task.takes_context else params)

    def start(args: tuple[Any, ...], kwargs: dict[str, Any]) -> tuple[OffloadTaskResult, list[Any]]:
        ctx = current_job()
        now = datetime.now(UTC)
        result = OffloadTaskResult(
            task=task,
            id=ctx.id,
            status=TaskResultStatus.RUNNING,
            enqueued_at=datetime.fromtimestamp(ctx.created_at, UTC),
            started_at=now,
            last_attempted_at=now,
            finished_at=None,
            args=list(args),
            kwargs=dict(kwargs),
            backend=alias,
            errors=[],
            worker_ids=[ctx.worker_id] * ctx.attempt,
            offload_state=JobState.RUNNING,
        )
        call_args = [TaskContext(task_result=result), *args] if task.takes_context else [*args]
        return result, call_args

    def failed(result: OffloadTaskResult, exc: BaseException) -> bool:
        """Record the failure on `result`; whether it is final (offload won't retry)."""
        ctx = current_job()
        defaults = app.tasks[name].defaults
        decision = defaults.retry.decide(
            exc, attempt=ctx.attempt, max_attempts=ctx.max_attempts, backoff=defaults.backoff
        )
        error = TaskError(
            exception_class_path=type_path(type(exc)), traceback="".join(format_exception(exc))
        )
        final = decision.delay_s is None
        status = TaskResultStatus.FAILED if final else TaskResultStatus.READY
        _finish(result, status, JobState.DEAD if final else JobState.SCHEDULED)
        result.errors.append(error)
        return final

    def succeeded(result: OffloadTaskResult, value: Any) -> Any:
        value = normalize_json(value)
        _finish(result, TaskResultStatus.SUCCESSFUL, JobState.SUCCEEDED)
        object.__setattr__(result, "_return_value", value)
        return value

    if inspect.iscoroutinefunction(func):

        async def handler(*args: Any, **kwargs: Any) -> Any:
            # The ORM of async code runs in asgiref's thread (`sync_to_async`): its
            # connections are cleaned up around the task there, as around a sync task.
            await _close_old_connections_async()
            try:
                return await run_async(args, kwargs)
            finally:
                await _close_old_connections_async()

        async def run_async(args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
            result, call_args = start(args, kwargs)
            await asyncio.to_thread(_send, task_started, sender, result)
            try:
                value = succeeded(result, await func(*call_args, **kwargs))
            except BaseException as exc:
                if failed(result, exc):
                    await asyncio.to_thread(_send, task_finished, sender, result)
                raise
            await asyncio.to_thread(_send, task_finished, sender, result)
            return value

        run: Callable[..., Any] = handler
    else:

        def sync_handler(*args: Any, **kwargs: Any) -> Any:
            close_old_connections()
            try:
                result, call_args = start(args, kwargs)
                task_started.send(sender, task_result=result)
                try:
                    value = succeeded(result, func(*call_args, **kwargs))
                except BaseException as exc:
                    if failed(result, exc):  # sent inside the handler: loggers see exc_info
                        task_finished.send(sender, task_result=result)
                    raise
                task_finished.send(sender, task_result=result)
                return value
            finally:
                close_old_connections()

        run = sync_handler
    run.__signature__ = signature  # type: ignore[attr-defined]
    run.__module__, run.__qualname__, run.__doc__ = func.__module__, func.__qualname__, func.__doc__
    return run


async def _close_old_connections_async() -> None:
    """`close_old_connections()` in asgiref's thread for async code's ORM calls (its
    single thread, outside any `async_to_sync`), from a fresh context: a worker driven
    from inside `async_to_sync` (a test's) inherits that caller's context, where
    `sync_to_async` would pick the caller's own thread, blocked waiting for the
    worker: a deadlock."""
    cleanup = sync_to_async(close_old_connections)()
    await asyncio.create_task(cleanup, context=contextvars.Context())


def _send(signal: Signal, sender: type, result: OffloadTaskResult) -> None:
    """Send an async task's `signal` from a thread of the default executor, its
    database connections cleaned up around the receivers as around a sync task: else a
    receiver's query leaves that pool thread a connection open for the worker's life."""
    close_old_connections()
    try:
        signal.send(sender, task_result=result)
    finally:
        close_old_connections()


def _finish(result: OffloadTaskResult, status: TaskResultStatus, state: JobState) -> None:
    object.__setattr__(result, "status", status)
    object.__setattr__(result, "offload_state", state)
    object.__setattr__(result, "finished_at", datetime.now(UTC))
