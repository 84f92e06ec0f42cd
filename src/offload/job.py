"""`Job`: the producer's handle on an enqueued job.

It holds only the id (and the producer to ask through: its broker connection and sync
portal), so it is cheap to create, and `app.job(id)` rebuilds it anywhere, for example
in a later HTTP request.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import msgspec

from offload.attempts import job_with_history
from offload.brokers.base import EnqueueResult, JobInfo
from offload.envelope import JobState
from offload.errors import (
    ConfigurationError,
    JobCancelled,
    JobExpired,
    JobFailed,
    JobNotFound,
    ResultTimeout,
    SerializationError,
)
from offload.workflow_engine import WorkflowEngine

if TYPE_CHECKING:
    from offload.producer import Producer

__all__ = ["Job", "handles"]

#: Without a broker push, re-reads start this fast (seconds) and back off to
#: `_POLL_MAX_S`; with one, the job is re-read after `_PUSHED_MAX_S` at the latest (a
#: safety net: a push lost with a dropped connection costs that long, never forever).
_POLL_MIN_S = 0.005
_POLL_MAX_S = 0.25
_PUSHED_MAX_S = 5.0


class Job:
    """An enqueued job. `created` is False when an idempotency key matched an existing
    job, whose id this handle then carries."""

    __slots__ = ("_producer", "created", "id")

    def __init__(self, producer: Producer, job_id: str, *, created: bool = True) -> None:
        self._producer = producer
        self.id = job_id
        self.created = created

    def __repr__(self) -> str:
        return f"<Job {self.id}>"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Job) and other.id == self.id

    def __hash__(self) -> int:
        return hash(self.id)

    # -- async -------------------------------------------------------------------------

    async def info_async(self) -> JobInfo:
        """Everything the broker knows about this job, with its attempt history
        (`JobInfo.attempts`, see `offload.attempts`).

        Raises:
            JobNotFound: unknown id, or the job was purged after its retention.
        """
        return await self._read(history=True)

    async def _read(self, *, history: bool = False) -> JobInfo:
        broker = await self._producer.connected_broker()
        if history:
            info = await job_with_history(broker, self.id)
        else:
            info = await broker.get_job(self.id)
        if info is None:
            raise JobNotFound(self.id, f"no job {self.id} (never enqueued, or purged)")
        return info

    async def state_async(self) -> JobState:
        return (await self._read()).state

    async def result_async(self, timeout: float | None = None) -> Any:
        """Wait for the job to finish and return its result.

        Waits on the broker's push where it has one (`Broker.wait_finished`: Redis
        pub/sub, PostgreSQL LISTEN/NOTIFY, and any broker for an end in this process);
        otherwise in `wait_finished` slices of 5 to 250 ms, between which it reads the
        job again (SQLite's returns early when another process commits the end).

        Args:
            timeout: seconds to wait; None waits forever.

        Raises:
            JobFailed: the job is dead (`.error` says why).
            JobExpired / JobCancelled: it never ran to completion.
            ResultTimeout: still unfinished after `timeout` seconds.
            JobNotFound: unknown or purged.
            SerializationError: the stored result is not JSON (garbage in the broker).
            ConfigurationError: `timeout` is not a number of seconds (or NaN).
        """
        deadline = wait_deadline(timeout)
        broker = await self._producer.connected_broker()
        pushed = broker.capabilities.push_results
        delay = _PUSHED_MAX_S if pushed else _POLL_MIN_S
        while True:
            info = await self._read()
            if info.state is JobState.SUCCEEDED:
                return _result_value(info)
            _raise_for_outcome(info)
            if deadline is not None and time.monotonic() >= deadline:
                raise ResultTimeout(self.id, f"job {self.id} still {info.state} after {timeout} s")
            pause = delay if deadline is None else min(delay, deadline - time.monotonic())
            await broker.wait_finished(self.id, max(pause, 0.0))
            if not pushed:
                delay = min(delay * 2, _POLL_MAX_S)

    async def cancel_async(self) -> bool:
        """Cancel the job if it has not started (it will never run); a running job is
        flagged for cooperative cancellation. False if it already finished.

        A workflow step cancelled before it ran stops what follows it here and now
        (otherwise a worker would, from the broker's outbox, within a second)."""
        broker = await self._producer.connected_broker()
        if not await broker.cancel(self.id):
            return False
        await WorkflowEngine(self._producer, broker).cancelled(self.id)
        return True

    # -- sync twins --------------------------------------------------------------------

    def info(self) -> JobInfo:
        return self._producer.portal.run(self.info_async())

    def state(self) -> JobState:
        return self._producer.portal.run(self.state_async())

    def result(self, timeout: float | None = None) -> Any:
        return self._producer.portal.run(self.result_async(timeout))

    def cancel(self) -> bool:
        return self._producer.portal.run(self.cancel_async())


def handles(producer: Producer, results: Sequence[EnqueueResult]) -> list[Job]:
    """The handles on the jobs of an enqueue (`created=False`: a key matched)."""
    return [Job(producer, r.id, created=r.created) for r in results]


def _result_value(info: JobInfo) -> Any:
    try:
        return info.result_value()
    except msgspec.DecodeError as exc:  # garbage in the broker: say so, in our terms
        raise SerializationError(f"the stored result of job {info.id} is not JSON: {exc}") from exc


def _raise_for_outcome(info: JobInfo) -> None:
    if info.state is JobState.DEAD:
        raise JobFailed(info.id, info.error)
    if info.state is JobState.EXPIRED:
        raise JobExpired(info.id, f"job {info.id} expired before it could run")
    if info.state is JobState.CANCELLED:
        raise JobCancelled(info.id, f"job {info.id} was cancelled")


def wait_deadline(timeout: float | None) -> float | None:
    """The `time.monotonic()` deadline of a wait of `timeout` seconds (None: forever).

    Raises:
        ConfigurationError: `timeout` is not a number, or NaN: a NaN deadline compares
            false with every time, so `result(timeout=nan)` waited forever, silently.
    """
    if timeout is None:
        return None
    if isinstance(timeout, bool) or not isinstance(timeout, int | float) or math.isnan(timeout):
        raise ConfigurationError(f"timeout must be seconds or None, got {timeout!r}")
    return time.monotonic() + timeout
