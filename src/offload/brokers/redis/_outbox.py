"""The outbox on Redis (`Broker.outbox`, `Broker.clear_outbox`, `outbox.lua`).

Each queue has its own outbox, the zset `P:{q}:outbox` (members: the job's enqueue
sequence, fixed width, then its id; scores: end times), so the
script that cancels or expires a job records it in the same atomic call, in the
queue's slot (cluster-safe). Only workflow jobs are recorded: `enqueue` sets the
record's `o` field when the envelope has `then` or `chord`, so an expiry storm of plain
jobs writes nothing more. Reading merges the heads of every known queue's outbox;
deleting a job (`sweep`) takes its entry with it. Ends at one time (one script call
expires many) come in enqueue order.
"""

from __future__ import annotations

import heapq
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from offload.brokers.base import Ended
from offload.brokers.redis._records import text
from offload.brokers.redis._scripts import Call
from offload.envelope import Envelope, JobState

if TYPE_CHECKING:
    from offload.brokers.redis import RedisBroker

__all__ = ["clear_outbox", "outbox", "workflow_flag"]

#: Where the job id starts in an outbox member (after the 12-digit sequence).
MEMBER_ID_AT = 12


def workflow_flag(envelope: Envelope) -> str:
    """The enqueue argument that marks a job whose unrun end goes to the outbox."""
    return "1" if envelope.has_follow_ups else ""


async def outbox(broker: RedisBroker, limit: int) -> list[Ended]:
    if limit <= 0:
        return []
    names = await broker._known_queues()
    calls: list[Call] = [("outbox", broker._q(q), [str(limit)]) for q in names]
    found: list[tuple[float, str, Any, Any]] = []
    for reply in await broker._run_many(calls):
        for i in range(0, len(reply), 4):
            found.append((float(reply[i + 1]), text(reply[i]), reply[i + 2], reply[i + 3]))
    return [
        Ended(member[MEMBER_ID_AT:], JobState(text(state)), bytes(payload))
        for _, member, state, payload in heapq.nsmallest(limit, found)
    ]


async def clear_outbox(broker: RedisBroker, job_ids: Sequence[str]) -> None:
    """One script per known queue, pipelined: the ids may be of any queue."""
    if not job_ids:
        return
    names = await broker._known_queues()
    await broker._run_many([("clear_outbox", broker._q(q), list(job_ids)) for q in names])
