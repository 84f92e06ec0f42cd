"""Django's view of an offload job: `OffloadTaskResult`, built from a `JobInfo`.

Django has four statuses where offload has seven states, so the mapping folds:

| offload            | Django      |
|--------------------|-------------|
| scheduled, queued  | READY       |
| running            | RUNNING     |
| succeeded          | SUCCESSFUL  |
| dead, expired, cancelled | FAILED |

Nothing is lost: `offload_state` keeps the state, and `offload_error` the full error
record (its message says why offload gave up, e.g. "attempts exhausted (5/5)").
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from django.tasks import Task, TaskResult, TaskResultStatus
from django.tasks.base import TASK_REFRESH_ATTRS, TaskError

import offload.errors
from offload.brokers.base import JobInfo
from offload.envelope import ErrorInfo, JobState

__all__ = ["STATUS", "OffloadTaskResult", "from_info", "task_error"]

STATUS = {
    JobState.SCHEDULED: TaskResultStatus.READY,
    JobState.QUEUED: TaskResultStatus.READY,
    JobState.RUNNING: TaskResultStatus.RUNNING,
    JobState.SUCCEEDED: TaskResultStatus.SUCCESSFUL,
    JobState.DEAD: TaskResultStatus.FAILED,
    JobState.EXPIRED: TaskResultStatus.FAILED,
    JobState.CANCELLED: TaskResultStatus.FAILED,
}

_OFFLOAD_ATTRS = ("offload_state", "offload_error")


@dataclass(frozen=True, slots=True, kw_only=True)
class OffloadTaskResult(TaskResult):
    """A `TaskResult` that keeps what offload knows beyond Django's status.

    Attributes:
        offload_state: the job's offload state (`JobState`), finer than `status`.
        offload_error: the latest error record (`ErrorInfo`: type, class path,
            message with offload's reason, traceback), or None.
    """

    offload_state: JobState = JobState.QUEUED
    offload_error: ErrorInfo | None = None

    def refresh(self) -> None:
        """Reload from the broker (Django's attributes and offload's)."""
        self._update(self.task.get_backend().get_result(self.id))

    async def arefresh(self) -> None:
        """`refresh` for async code."""
        self._update(await self.task.get_backend().aget_result(self.id))

    def _update(self, fresh: TaskResult) -> None:
        for attr in (*TASK_REFRESH_ATTRS, *_OFFLOAD_ATTRS):
            object.__setattr__(self, attr, getattr(fresh, attr, None))


def _time(ts: float | None) -> datetime | None:
    return None if ts is None else datetime.fromtimestamp(ts, UTC)


def exception_path(error: ErrorInfo) -> str:
    """The importable class of an error record, for `TaskError.exception_class`.

    Records of exceptions name their class (`ErrorInfo.type_path`); a reason offload
    recorded itself names its exception in `offload.errors` where there is one
    (`UnknownTask`, `InvalidArguments`), else `offload.errors.JobFailed`.
    """
    if error.type_path:
        return error.type_path
    cls = getattr(offload.errors, error.type, None)
    if isinstance(cls, type) and issubclass(cls, BaseException):
        return f"offload.errors.{error.type}"
    return "offload.errors.JobFailed"


def task_error(error: ErrorInfo) -> TaskError:
    """Django's record of an error: the class path and the traceback (or, for a reason
    offload recorded itself, its type and message)."""
    return TaskError(
        exception_class_path=exception_path(error),
        traceback=error.traceback or f"{error.type}: {error.message}\n",
    )


def from_info(task: Task, info: JobInfo, alias: str) -> OffloadTaskResult:
    """Django's result for the job `info`, whose task is `task`."""
    envelope = info.envelope()
    status = STATUS[info.state]
    finished = status in (TaskResultStatus.SUCCESSFUL, TaskResultStatus.FAILED)
    result = OffloadTaskResult(
        task=task,
        id=info.id,
        status=status,
        enqueued_at=_time(info.created_at),
        started_at=_time(info.started_at),
        last_attempted_at=_time(info.started_at),
        finished_at=_time(info.finished_at) if finished else None,
        args=envelope.args if envelope is not None else [],
        kwargs=envelope.kwargs if envelope is not None else {},
        backend=alias,
        errors=[] if info.error is None else [task_error(info.error)],
        # offload records the worker of the latest attempt only
        worker_ids=[info.worker_id or ""] * info.attempt,
        offload_state=info.state,
        offload_error=info.error,
    )
    if info.state is JobState.SUCCEEDED:
        object.__setattr__(result, "_return_value", info.result_value())
    return result


def enqueued(
    task: Task,
    job_id: str,
    args: list[Any],
    kwargs: dict[str, Any],
    alias: str,
    *,
    created_at: float,
    scheduled: bool,
) -> OffloadTaskResult:
    """The result `enqueue` returns: what `get_result` reads back for a fresh job."""
    return OffloadTaskResult(
        task=task,
        id=job_id,
        status=TaskResultStatus.READY,
        enqueued_at=_time(created_at),
        started_at=None,
        last_attempted_at=None,
        finished_at=None,
        args=args,
        kwargs=kwargs,
        backend=alias,
        errors=[],
        worker_ids=[],
        offload_state=JobState.SCHEDULED if scheduled else JobState.QUEUED,
    )
