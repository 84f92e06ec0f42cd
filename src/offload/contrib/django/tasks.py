"""`OffloadTask`: a Django task with offload's per-task options.

`OffloadBackend.task_class` is this class, so Django's own decorator takes the options
when the task's backend is offload's:

    @task(queue_name="emails", max_attempts=8, expires=900, rate_limit="10/s")
    def send_welcome(user_id: int) -> None: ...

    send_welcome.using(key=f"welcome:{user.id}").enqueue(user.id)   # per enqueue

Each option is `None` by default: the backend's `OPTIONS["defaults"]`, else offload's
own default, applies.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, fields, replace
from datetime import datetime, timedelta
from typing import Any

from django.tasks import Task

from offload.envelope import Backoff

__all__ = ["ENQUEUE_OPTIONS", "TASK_OPTIONS", "OffloadTask"]


@dataclass(frozen=True, slots=True, kw_only=True)
class OffloadTask(Task):
    """A `django.tasks.Task` that also carries offload's options (see `Offload.task`).

    Attributes:
        max_attempts: total runs including the first (offload's default: 5). A job
            whose worker died is run again while attempts remain.
        backoff: retry delays (`offload.Backoff`).
        retry_on / give_up_on: exception types that retry / fail at once.
        timeout: stop an attempt after this long (async tasks only: a sync function
            cannot be stopped in a worker thread).
        expires: a job not started this long after its enqueue never runs (FAILED).
        result_ttl: keep a finished job and its result this long (seconds).
        rate_limit / rate_key / concurrency_limit / concurrency_key: flow control,
            fleet-wide (`"10/s"`, a key from the arguments, running jobs at once).
        key: idempotency key, a string or a function of the task's arguments: while a
            job with this key exists, enqueueing another returns the existing one.
        max_depth: enqueue fails past this many waiting jobs in the task's queue.
    """

    max_attempts: int | None = None
    backoff: Backoff | None = None
    retry_on: tuple[type[BaseException], ...] | None = None
    give_up_on: tuple[type[BaseException], ...] | None = None
    timeout: float | timedelta | None = None
    expires: float | timedelta | None = None
    result_ttl: float | timedelta | None = None
    rate_limit: str | None = None
    rate_key: Callable[..., str] | None = None
    concurrency_limit: int | None = None
    concurrency_key: Callable[..., str] | None = None
    key: str | Callable[..., str] | None = None
    max_depth: int | None = None

    def using(
        self,
        *,
        priority: int | None = None,
        queue_name: str | None = None,
        run_after: datetime | None = None,
        backend: str | None = None,
        **offload: Any,
    ) -> OffloadTask:
        """Django's `using`, plus the per-enqueue offload options
        (`ENQUEUE_OPTIONS`: key, expires, max_attempts, backoff, timeout).

        Raises:
            TypeError: an option that is not per enqueue (limits and retry types
                belong to the task, which the worker knows by its module path).
        """
        unknown = sorted(set(offload) - set(ENQUEUE_OPTIONS))
        if unknown:
            raise TypeError(
                f"using() got {', '.join(unknown)}: per enqueue, offload takes "
                f"{', '.join(ENQUEUE_OPTIONS)}; give the others to @task"
            )
        task: OffloadTask = Task.using(
            self, priority=priority, queue_name=queue_name, run_after=run_after, backend=backend
        )
        return replace(task, **offload) if offload else task


#: The offload options of `OffloadTask`, in field order.
TASK_OPTIONS = tuple(f.name for f in fields(OffloadTask) if f.name not in Task.__dataclass_fields__)
#: Those an enqueue may set (`OffloadTask.using`); the rest shape the task itself.
ENQUEUE_OPTIONS = ("key", "expires", "max_attempts", "backoff", "timeout")
