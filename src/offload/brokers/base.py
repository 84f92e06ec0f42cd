"""The broker contract's names in one import: `Broker` (every role) and its records.

The contract itself is in `offload.brokers.roles` (the roles), `offload.brokers.part`
(what they share: `Capabilities`, `TransactionalEnqueue`) and `offload.brokers.records`
(the values they take and return, `Settlement` among them); this module gathers them
for code that takes a whole broker.
"""

from __future__ import annotations

from offload.brokers.part import Capabilities, TransactionalEnqueue
from offload.brokers.records import (
    DEFAULT_RETENTION_S,
    LEASE_EXPIRED,
    Ended,
    Ending,
    EnqueueResult,
    Finished,
    JobInfo,
    Lease,
    Outcome,
    Page,
    QueueStats,
    Settlement,
    SweepReport,
    WorkerInfo,
)
from offload.brokers.roles import Broker

__all__ = [
    "DEFAULT_RETENTION_S",
    "LEASE_EXPIRED",
    "Broker",
    "Capabilities",
    "Ended",
    "Ending",
    "EnqueueResult",
    "Finished",
    "JobInfo",
    "Lease",
    "Outcome",
    "Page",
    "QueueStats",
    "Settlement",
    "SweepReport",
    "TransactionalEnqueue",
    "WorkerInfo",
]
