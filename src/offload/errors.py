"""Every exception offload raises, under one root.

```
OffloadError                         base of everything we raise
├── ConfigurationError(ValueError)   bad URL / unknown scheme / missing extra / bad option
│   └── InvalidSchedule              bad cron expression, time zone or interval
├── SerializationError(TypeError)    argument or result not JSON-encodable (raised at the producer)
├── InvalidArguments(TypeError)      arguments do not fit the task's signature
├── UnknownTask(LookupError)         no task registered under that name
├── BrokerError                      broker-side failure, carries __cause__
│   ├── BrokerUnavailable            connection refused / lost (transient; worker backs off)
│   ├── LeaseLost                    ack/extend/retry with a stale token: job was redelivered
│   └── QueueFull                    enqueue refused: the queue is at its max depth (backpressure)
├── JobError                         outcome errors seen by callers of Job.result, carry .job_id
│   ├── JobNotFound(LookupError)     no such job (never existed, or purged after its TTL)
│   ├── JobFailed                    job is dead; .error has type, message, traceback
│   ├── JobCancelled
│   ├── JobExpired
│   └── ResultTimeout(TimeoutError)
├── JobTimeout(TimeoutError)         a handler ran past its timeout and was stopped (retryable)
└── JobControl                       raised *by handlers* to steer the worker; not an error
    ├── Retry(delay=None, reason=…)  retry now or after delay (e.g. Retry-After)
    └── Bury(reason=…)               fail permanently, skip remaining attempts
```

Each class's docstring is its default message, so `raise LeaseLost()` still says
something useful.
"""

from __future__ import annotations

from datetime import timedelta
from typing import TYPE_CHECKING

from offload._redact import redact

if TYPE_CHECKING:
    from offload.envelope import ErrorInfo

__all__ = [
    "BrokerError",
    "BrokerUnavailable",
    "Bury",
    "ConfigurationError",
    "InvalidArguments",
    "InvalidSchedule",
    "JobCancelled",
    "JobControl",
    "JobError",
    "JobExpired",
    "JobFailed",
    "JobNotFound",
    "JobTimeout",
    "LeaseLost",
    "OffloadError",
    "QueueFull",
    "ResultTimeout",
    "Retry",
    "SerializationError",
    "UnknownTask",
]


class OffloadError(Exception):
    """An offload error."""

    def __init__(self, message: str | None = None) -> None:
        # Messages often quote a URL or a driver's error text: scrub credentials here,
        # once, so that no error offload raises can print a password.
        super().__init__(
            redact(message) if message else (self.__doc__ or "").strip().splitlines()[0]
        )


class ConfigurationError(OffloadError, ValueError):
    """Invalid configuration."""


class InvalidSchedule(ConfigurationError):
    """Invalid schedule: bad cron expression, time zone or interval."""


class SerializationError(OffloadError, TypeError):
    """A value cannot be encoded as JSON."""


class InvalidArguments(OffloadError, TypeError):
    """The arguments do not fit the task's signature."""


class UnknownTask(OffloadError, LookupError):
    """No task is registered under that name."""


class BrokerError(OffloadError):
    """The broker failed."""


class BrokerUnavailable(BrokerError):
    """The broker cannot be reached."""


class LeaseLost(BrokerError):
    """The lease on this job is no longer ours: it expired and the job may run elsewhere."""


class QueueFull(BrokerError):
    """The queue is full: enqueueing would exceed its maximum depth; nothing was stored."""


class JobError(OffloadError):
    """A job did not produce a result."""

    def __init__(self, job_id: str, message: str | None = None) -> None:
        self.job_id = job_id
        super().__init__(message)


class JobNotFound(JobError, LookupError):
    """No such job: it never existed, or it was purged after its retention."""


class JobFailed(JobError):
    """The job failed permanently and is in the dead-letter queue."""

    def __init__(self, job_id: str, error: ErrorInfo | None) -> None:
        self.error = error
        detail = f"{error.type}: {error.message}" if error else "no error recorded"
        super().__init__(job_id, f"job {job_id} is dead ({detail})")


class JobCancelled(JobError):
    """The job was cancelled."""


class JobExpired(JobError):
    """The job expired before it could start."""


class ResultTimeout(JobError, TimeoutError):
    """The job did not finish within the wait."""


class JobTimeout(OffloadError, TimeoutError):
    """The job ran past its timeout and was stopped."""


class JobControl(Exception):
    """Raised by a handler to steer the worker. Never logged as an error."""


#: The message of a `Retry` raised without a reason.
RETRY_NO_REASON = "retry requested"


class Retry(JobControl):
    """Retry this job, after `delay` seconds if given, else per the retry policy.

    The attempt still counts against `max_attempts`: a handler that always asks for a
    retry ends in the dead-letter queue, never in a loop.
    """

    def __init__(self, delay: float | timedelta | None = None, reason: str = "") -> None:
        from offload.validation import duration  # validation raises the errors defined here

        self.delay = duration(delay, "Retry delay")  # NaN, inf, negative: ConfigurationError
        self.reason = reason
        super().__init__(reason or RETRY_NO_REASON)


class Bury(JobControl):
    """Fail this job permanently: skip remaining attempts and move it to the dead-letter queue."""

    def __init__(self, reason: str = "") -> None:
        self.reason = reason
        super().__init__(reason or "buried by handler")
