"""The broker contract's names in one import: `Broker` (every role) and its records.

The contract itself is in `offload.brokers.roles` (the roles and `Settlement`) and
`offload.brokers.records` (the values they take and return); this module gathers them
for code that takes a whole broker.
"""

from __future__ import annotations

from offload.brokers.records import (
    DEFAULT_RETENTION_S,
    LEASE_EXPIRED,
    Ended,
    EnqueueResult,
    Finished,
    JobInfo,
    Lease,
    Outcome,
    Page,
    QueueStats,
    SweepReport,
    WorkerInfo,
)
from offload.brokers.roles import (
    Broker,
    Capabilities,
    Ending,
    Settlement,
    TransactionalEnqueue,
)

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
