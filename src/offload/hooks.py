"""Lifecycle hooks: what metrics, tracing, Sentry or an audit log plug into.

A hook is an object with any of the methods of `Hook` (subclass it and override what
you need); `app.add_hook(hook)` registers it for the app's producers and workers.
Hooks are called in the order they were added, synchronously, on the thread or event
loop that does the work (a worker's loop: a hook must not block).

What a hook cannot do is harm a job: an exception a hook raises is logged (logger
`offload.hooks`, with the hook, the event and the job) and swallowed, and the enqueue or
the job goes on as if the hook were not there. A hook that changes an envelope in
`before_enqueue` is trusted to keep it valid (the envelope is checked after it).

With no hook registered the worker and the producer skip every call here (one
truthiness test per job), so hooks cost nothing unless used.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar, Literal, Protocol

from offload.envelope import Envelope, ErrorInfo, JobState

if TYPE_CHECKING:
    from offload.brokers.base import Lease

__all__ = ["OUTCOMES", "Hook", "HookedWorker", "Hooks", "Run", "RunOutcome"]


class HookedWorker(Protocol):
    """What a hook is handed of the worker that starts or stops (an
    `offload.worker.Worker`). A protocol rather than the class: the producer runs hooks
    too, and the modules below the worker import nothing of it."""

    @property
    def id(self) -> str: ...

    @property
    def queues(self) -> list[str]: ...


logger = logging.getLogger("offload.hooks")

#: How a finished attempt ended, as hooks, metrics and the job log name it.
RunOutcome = Literal["succeeded", "retried", "dead", "cancelled"]

#: The worker's outcome actions (`worker.executor.Outcome.action`) by those names.
OUTCOMES: dict[str, RunOutcome] = {
    "ack": "succeeded",
    "retry": "retried",
    "bury": "dead",
    "cancel": "cancelled",
}


@dataclass(slots=True)
class Run:
    """One attempt of one job, as a worker runs it.

    `envelope` is None for a payload that cannot be decoded (the job is buried as
    `Undecodable`); `task` is then "?". `wait_s` is the time from when the job was due
    (its enqueue, or its delay's end) to this start, for the first attempt only (a
    retry's due time is not in the envelope). `outcome`, `error`, `delay_s` and
    `duration_s` are set once the attempt has ended. `scratch` is for hooks: state kept
    from `before_run` to `after_run` (a span, a timer), by the hook's own key.

    `first_trace` is the trace context of the job's first attempt: for a later attempt,
    read by the worker from the job's history before `before_run` (when a hook sets
    `Hook.links_attempts`); for the first attempt, a hook may set it in `before_run`.
    The worker records it with the attempt if it fails (`offload.attempts`), so the
    next attempt gets it.
    """

    job_id: str
    queue: str
    attempt: int
    worker_id: str
    envelope: Envelope | None
    started_at: float  # wall clock (epoch seconds)
    wait_s: float | None = None
    outcome: RunOutcome | None = None  # None: not recorded (lease lost, shutdown)
    error: ErrorInfo | None = None
    delay_s: float | None = None  # retried: seconds until the next attempt
    duration_s: float = 0.0  # the handler's run, settlement excluded
    scratch: dict[str, Any] = field(default_factory=dict)
    first_trace: dict[str, str] | None = None
    _t0: float = 0.0  # perf_counter at start

    @property
    def task(self) -> str:
        return self.envelope.task if self.envelope is not None else "?"


class Hook:
    """The events a hook may handle; each default does nothing.

    Producer side:
        before_enqueue: each job before it is encoded and sent; return a replacement
            envelope (e.g. with `trace` set), or None to keep it.
        after_enqueue: each job once the broker answered: `created` False for a
            duplicate key (the existing job stands), or `error` if the enqueue raised.
    Worker side:
        before_run: an attempt is about to run (in the job's own asyncio task, so a
            context variable set here is seen by the handler and by `after_run`).
        after_run: the attempt ended and its outcome was recorded (`run.outcome`).
        on_retry / on_dead: called before `after_run` when the attempt was retried or
            buried (dead-letter queue).
        on_worker_start / on_worker_stop: a worker's start (broker reached) and end.
        on_broker_error: a worker's broker call failed (`what`: "reserve", "recording
            an outcome", ...); the worker retries it with backoff.
        on_ended: a job ended inside the broker, where no worker ran it: `state` is
            `expired` (not started before its expiry) or `cancelled` (while waiting).
            Called once per such job across the fleet, by the worker that cleared the
            job's outbox entry (`Broker.clear_outbox`); `envelope` is None if the
            stored payload is not one.

    `links_attempts`: set it True (as `offload.tracing.Tracing` does) for
    `run.first_trace` to be read from the job's history before a later attempt's
    `before_run`; that costs one broker read per retried attempt.
    """

    links_attempts: ClassVar[bool] = False

    def before_enqueue(self, envelope: Envelope) -> Envelope | None:
        return None

    def after_enqueue(
        self, envelope: Envelope, created: bool | None, error: BaseException | None
    ) -> None:
        return None

    def before_run(self, run: Run) -> None:
        return None

    def after_run(self, run: Run) -> None:
        return None

    def on_retry(self, run: Run) -> None:
        return None

    def on_dead(self, run: Run) -> None:
        return None

    def on_worker_start(self, worker: HookedWorker) -> None:
        return None

    def on_worker_stop(self, worker: HookedWorker) -> None:
        return None

    def on_broker_error(self, what: str, error: BaseException) -> None:
        return None

    def on_ended(self, job_id: str, state: JobState, envelope: Envelope | None) -> None:
        return None


class Hooks:
    """The hooks of one app, and the guarded calls to them."""

    def __init__(self) -> None:
        self._hooks: list[Hook] = []

    def __bool__(self) -> bool:
        return bool(self._hooks)

    def __iter__(self) -> Any:
        return iter(self._hooks)

    @property
    def links_attempts(self) -> bool:
        """Whether a hook wants `Run.first_trace` read before a later attempt."""
        return any(hook.links_attempts for hook in self._hooks)

    def add(self, hook: Hook) -> None:
        """Register `hook` (once: adding the same object again does nothing)."""
        if not isinstance(hook, Hook):
            raise TypeError(f"a hook must be an offload.hooks.Hook, got {type(hook).__name__}")
        if hook not in self._hooks:
            self._hooks.append(hook)

    def remove(self, hook: Hook) -> None:
        if hook in self._hooks:
            self._hooks.remove(hook)

    # -- producer ----------------------------------------------------------------------

    def before_enqueue(self, envelope: Envelope) -> Envelope:
        for hook in self._hooks:
            try:
                changed = hook.before_enqueue(envelope)
            except Exception:
                _failed(hook, "before_enqueue", envelope.id)
                continue
            if isinstance(changed, Envelope):
                envelope = changed
        return envelope

    def after_enqueue(
        self,
        envelopes: Sequence[Envelope],
        created: Sequence[bool] | None,
        error: BaseException | None = None,
    ) -> None:
        for hook in self._hooks:
            for i, envelope in enumerate(envelopes):
                made = created[i] if created is not None else None
                try:
                    hook.after_enqueue(envelope, made, error)
                except Exception:
                    _failed(hook, "after_enqueue", envelope.id)

    # -- worker ------------------------------------------------------------------------

    def started(
        self,
        lease: Lease,
        envelope: Envelope | None,
        worker_id: str,
        now: float,
        first_trace: dict[str, str] | None = None,
    ) -> Run:
        """A new `Run` for `lease` starting at `now` (the app's clock), with
        `before_run` called."""
        wait_s = None
        if envelope is not None and lease.attempt == 1:
            due = max(envelope.created_at, envelope.not_before or 0.0)
            wait_s = max(now - due, 0.0) if due else None
        run = Run(lease.job_id, lease.queue, lease.attempt, worker_id, envelope, now, wait_s)
        run.first_trace = first_trace
        self._each("before_run", lambda h: h.before_run(run), run.job_id)
        run._t0 = time.perf_counter()
        return run

    def ran(self, run: Run) -> None:
        """The handler returned (or failed): the attempt's duration."""
        run.duration_s = time.perf_counter() - run._t0

    def finished(self, run: Run) -> None:
        """Call `on_retry` / `on_dead`, then `after_run`."""
        if run.outcome == "retried":
            self._each("on_retry", lambda h: h.on_retry(run), run.job_id)
        elif run.outcome == "dead":
            self._each("on_dead", lambda h: h.on_dead(run), run.job_id)
        self._each("after_run", lambda h: h.after_run(run), run.job_id)

    def worker_started(self, worker: HookedWorker) -> None:
        self._each("on_worker_start", lambda h: h.on_worker_start(worker), None)

    def worker_stopped(self, worker: HookedWorker) -> None:
        self._each("on_worker_stop", lambda h: h.on_worker_stop(worker), None)

    def broker_error(self, what: str, error: BaseException) -> None:
        self._each("on_broker_error", lambda h: h.on_broker_error(what, error), None)

    def ended(self, job_id: str, state: JobState, envelope: Envelope | None) -> None:
        self._each("on_ended", lambda h: h.on_ended(job_id, state, envelope), job_id)

    def _each(self, event: str, call: Callable[[Hook], object], job_id: str | None) -> None:
        for hook in self._hooks:
            try:
                call(hook)
            except Exception:
                _failed(hook, event, job_id)


def _failed(hook: Hook, event: str, job_id: str | None) -> None:
    where = f" (job {job_id})" if job_id else ""
    logger.exception(
        "hook %s failed in %s%s; ignored",
        type(hook).__qualname__,
        event,
        where,
        extra={"action": "hook_failed", "hook": type(hook).__qualname__, "event": event},
    )
