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
    "enqueue_one_params",
    "enqueue_params",
    "enqueue_results",
    "job_info",
    "worker_info",
]

#: The error recorded on a job whose lease lapsed; the same words as every broker.
LEASE_EXPIRED = encode_error(base.LEASE_EXPIRED).decode()


#: The columns of the `enqueue` statement's rows, in `_columns` order.
_COLUMNS = (
    "ids", "queues", "tasks", "states", "priorities", "max_attempts", "keys",
    "created", "due", "expires", "payloads", "flows",
)  # fmt: skip
#: The same, as `enqueue_one` names its parameters.
_ONE = (
    "id", "queue", "task", "state", "priority", "max_attempts", "key",
    "created", "due", "expires", "payload", "flow",
)  # fmt: skip


def _columns(env: Envelope, payload: bytes, now: float) -> tuple[Any, ...]:
    """One job's row, in `_COLUMNS` order."""
    due_at = max(env.not_before or now, now)
    return (
        env.id,
        env.queue,
        env.task,
        "scheduled" if due_at > now else "queued",
        env.priority,
        env.max_attempts,
        env.key,
        env.created_at or now,
        due_at,
        env.expires_at,
        payload,
        # `flow`: a cancel or an expiry records the job in the outbox. Every job since
        # metrics count those ends (0006 named it for the workflow jobs it was for then).
        True,
    )


def enqueue_params(
    jobs: Sequence[tuple[Envelope, bytes]], now: float, channel: str
) -> dict[str, Any]:
    """The column arrays of the `enqueue` statement: one array per column, so a batch
    of any size is one statement with a fixed text (prepared once)."""
    rows = [_columns(env, payload, now) for env, payload in jobs]
    params: dict[str, Any] = {name: [row[i] for row in rows] for i, name in enumerate(_COLUMNS)}
    params["channel"] = channel
    return params


def enqueue_one_params(env: Envelope, payload: bytes, now: float, channel: str) -> dict[str, Any]:
    """The parameters of `enqueue_one`: the row `enqueue_params` would give the job."""
    params = dict(zip(_ONE, _columns(env, payload, now), strict=True))
    params["channel"] = channel
    return params


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
