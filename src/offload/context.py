"""What a running handler may ask about its own job.

A handler calls `current_job()` rather than receiving a context argument, so its
signature stays the one its callers enqueue with (and type-check against).
"""

from __future__ import annotations

from collections.abc import Callable
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any

from offload.envelope import Failure
from offload.errors import OffloadError

__all__ = ["JobContext", "current_job"]


@dataclass(frozen=True, slots=True)
class JobContext:
    """The job a handler is running.

    Attributes:
        attempt: 1 for the first run, 2 for the first retry, and so on.
        deadline: Unix time at which the job's timeout stops it, None without timeout.
        failures: for the first step after a workflow group (a chord's callback), the
            members that did not succeed (their entry in the results list is None).
    """

    id: str
    task: str
    queue: str
    attempt: int
    max_attempts: int
    key: str | None
    created_at: float
    deadline: float | None
    worker_id: str
    failures: tuple[Failure, ...] = ()

    @property
    def is_last_attempt(self) -> bool:
        return self.attempt >= self.max_attempts

    def progress(self, value: Any) -> None:
        """Report the job's progress: any JSON value (`42`, `{"done": 3, "of": 10}`),
        replacing the last report; the enqueuer reads it with `job.info().progress`.

        A sync handler's call returns once the report is stored; an async handler's
        is sent in the background (it never blocks the loop). A no-op where the
        worker cannot store it: in the child process of a sync task with a timeout,
        or outside a worker.

        Raises:
            SerializationError: `value` is not JSON-serializable.
        """
        reporter = _reporters.get(self.id)
        if reporter is not None:
            reporter(value)


_current: ContextVar[JobContext | None] = ContextVar("offload_current_job", default=None)
#: Where each running job's progress goes, by job id: set by the worker for the run.
_reporters: dict[str, Callable[[Any], None]] = {}


def current_job() -> JobContext:
    """The context of the job this code runs in.

    Raises:
        OffloadError: called outside a job handler (e.g. when the function is called
            directly rather than by a worker).
    """
    ctx = _current.get()
    if ctx is None:
        raise OffloadError("current_job() called outside a running job")
    return ctx
