"""What a running handler may ask about its own job.

A handler calls `current_job()` rather than receiving a context argument, so its
signature stays the one its callers enqueue with (and type-check against).
"""

from __future__ import annotations

from contextvars import ContextVar
from dataclasses import dataclass

from offload.errors import OffloadError

__all__ = ["JobContext", "current_job"]


@dataclass(frozen=True, slots=True)
class JobContext:
    """The job a handler is running.

    Attributes:
        attempt: 1 for the first run, 2 for the first retry, and so on.
        deadline: Unix time at which the job's timeout stops it, None without timeout.
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

    @property
    def is_last_attempt(self) -> bool:
        return self.attempt >= self.max_attempts


_current: ContextVar[JobContext | None] = ContextVar("offload_current_job", default=None)


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
