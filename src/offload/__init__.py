"""offload: background jobs for Python. Durable, leased, retried, observable.

    app = Offload()                       # sqlite:///offload.db, or OFFLOAD_URL

    @app.task(max_attempts=5, expires=900)
    def send_verification(email: str, code: str) -> None: ...

    send_verification.enqueue("ada@example.com", "123456")   # returns at once

and `offload worker myapp:app` runs it.
"""

from __future__ import annotations

from offload._version import __version__
from offload.app import Offload
from offload.attempts import Attempt, AttemptOutcome
from offload.brokers.base import Broker, JobInfo
from offload.context import JobContext, current_job
from offload.envelope import Backoff, JobState
from offload.errors import (
    BrokerError,
    BrokerUnavailable,
    Bury,
    ConfigurationError,
    InvalidArguments,
    InvalidSchedule,
    JobCancelled,
    JobError,
    JobExpired,
    JobFailed,
    JobNotFound,
    JobTimeout,
    LeaseLost,
    OffloadError,
    QueueFull,
    ResultTimeout,
    Retry,
    SerializationError,
    UnknownTask,
)
from offload.job import Job
from offload.pausing import Paused
from offload.schedule import Cron, Every
from offload.scheduler import Scheduler
from offload.task import Task
from offload.worker import Worker
from offload.workflow import Workflow, chain, chord, group

__all__ = [
    "Attempt",
    "AttemptOutcome",
    "Backoff",
    "Broker",
    "BrokerError",
    "BrokerUnavailable",
    "Bury",
    "ConfigurationError",
    "Cron",
    "Every",
    "InvalidArguments",
    "InvalidSchedule",
    "Job",
    "JobCancelled",
    "JobContext",
    "JobError",
    "JobExpired",
    "JobFailed",
    "JobInfo",
    "JobNotFound",
    "JobState",
    "JobTimeout",
    "LeaseLost",
    "Offload",
    "OffloadError",
    "Paused",
    "QueueFull",
    "ResultTimeout",
    "Retry",
    "Scheduler",
    "SerializationError",
    "Task",
    "UnknownTask",
    "Worker",
    "Workflow",
    "__version__",
    "chain",
    "chord",
    "current_job",
    "group",
]
