"""Between Python objects and rows: statement parameters in, `JobInfo`s out.

Pure functions, shared by the broker's own pool and by `enqueue_in` on the
application's connection, so both write exactly the same rows.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from offload.brokers import base
from offload.brokers._sql_rows import job_info, worker_info
from offload.brokers.base import EnqueueResult
from offload.codec import encode_error
from offload.envelope import Envelope

__all__ = [
    "LEASE_EXPIRED",
    "enqueue_params",
    "enqueue_results",
    "job_info",
    "worker_info",
]

#: The error recorded on a job whose lease lapsed; the same words as every broker.
LEASE_EXPIRED = encode_error(base.LEASE_EXPIRED).decode()


def enqueue_params(
    jobs: Sequence[tuple[Envelope, bytes]], now: float, channel: str
) -> dict[str, Any]:
    """The column arrays of the `enqueue` statement: one array per column, so a batch
    of any size is one statement with a fixed text (prepared once)."""
    columns: dict[str, list[Any]] = {
        name: []
        for name in (
            "ids", "queues", "tasks", "states", "priorities", "max_attempts", "keys",
            "created", "due", "expires", "payloads", "flows",
        )
    }  # fmt: skip
    for env, payload in jobs:
        due_at = max(env.not_before or now, now)
        columns["ids"].append(env.id)
        columns["queues"].append(env.queue)
        columns["tasks"].append(env.task)
        columns["states"].append("scheduled" if due_at > now else "queued")
        columns["priorities"].append(env.priority)
        columns["max_attempts"].append(env.max_attempts)
        columns["keys"].append(env.key)
        columns["created"].append(env.created_at or now)
        columns["due"].append(due_at)
        columns["expires"].append(env.expires_at)
        columns["payloads"].append(payload)
        # `flow`: a cancel or an expiry records the job in the outbox. Every job since
        # metrics count those ends (0006 named it for the workflow jobs it was for then).
        columns["flows"].append(True)
    return {**columns, "channel": channel}


def enqueue_results(
    jobs: Sequence[tuple[Envelope, bytes]], created: set[str], holders: dict[str, str]
) -> list[EnqueueResult]:
    """One result per job: created, else the id of the job holding its key (else its
    own id: the same envelope was already stored)."""
    results: list[EnqueueResult] = []
    for env, _ in jobs:
        if env.id in created and holders.get(env.key or "", env.id) == env.id:
            results.append(EnqueueResult(env.id, True))
            created.discard(env.id)  # a repeated envelope in one batch is created once
        elif env.key is not None and env.key in holders:
            results.append(EnqueueResult(holders[env.key], False))
        else:
            results.append(EnqueueResult(env.id, False))
    return results
