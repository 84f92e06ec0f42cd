"""Coordination on Redis: rate limits (`take_rate.lua`), concurrency slots
(`acquire_slot.lua`), the registers of `compare_and_set.lua` (the scheduler's
coordination), chord joins (`join.lua`) and the outbox (`outbox.lua`): the `Flow` role.

Each limit, register and group is one key of its own hash tag (`keys.rate_key`,
`keys.slots_key`, `keys.register_key`, `keys.chord_key`), so a script touches one slot
and runs unchanged on Redis Cluster. A group's members are one hash (member id → its
zero-padded index followed by its outcome); HSETNX keeps a member's first outcome, and
the hash lapses by EXPIRE after the broker's retention.

The outbox: each queue has its own, the zset `P:{q}:outbox` (members: the job's
enqueue sequence, fixed width, then its id; scores: end times), so the script that
cancels or expires a job records it in the same atomic call, in the queue's slot, and
marks the record (`o`). Every such job is recorded, since metrics count these ends; a
workflow job was marked at enqueue already (`workflow_flag`, from when only those were
recorded). Reading merges the heads of every known queue's outbox; deleting a job
(`sweep`) takes its entry with it; clearing returns the ids it removed (one script per
queue: each entry is removed by one call). Ends at one time (one script call expires
many) come in enqueue order.
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Sequence
from typing import Any

from offload.brokers.base import Ended
from offload.brokers.redis import keys as K
from offload.brokers.redis._executor import Executor
from offload.brokers.redis._records import num, text
from offload.brokers.redis._scripts import Call
from offload.clock import Clock
from offload.envelope import Envelope, JobState
from offload.limits import EPSILON_S

__all__ = ["Flow", "workflow_flag"]

#: Digits of the index stored before each outcome (sorts up to 10**10 members).
INDEX_DIGITS = 10
#: Where the job id starts in an outbox member (after the 12-digit sequence).
MEMBER_ID_AT = 12


def workflow_flag(envelope: Envelope) -> str:
    """The enqueue argument that marks a job whose unrun end goes to the outbox."""
    return "1" if envelope.has_follow_ups else ""


class Flow:
    """The `Flow` role on an `Executor`."""

    def __init__(self, x: Executor, clock: Clock, retention_s: float) -> None:
        self._x = x
        self._clock = clock
        self._retention_s = retention_s

    async def take_rate(self, key: str, limit: int, per_s: float) -> float:
        args = [num(self._clock.now()), str(limit), num(per_s), num(EPSILON_S)]
        reply = await self._x.run("take_rate", [K.rate_key(self._x.prefix, key)], args)
        return float(reply)

    async def acquire_slot(self, key: str, limit: int, holder: str, ttl_s: float) -> bool:
        now = self._clock.now()
        ttl_ms = str(math.ceil(ttl_s * 1000) + 1000)
        args = [num(now), str(limit), holder, num(now + ttl_s), ttl_ms]
        return bool(await self._x.run("acquire_slot", [K.slots_key(self._x.prefix, key)], args))

    async def compare_and_set(
        self, name: str, expected: str | None, new: str, ttl_s: float
    ) -> str | None:
        now = self._clock.now()
        ttl_ms = str(math.ceil(ttl_s * 1000) + 1000)
        args = ["0" if expected is None else "1", expected or "", new, num(now + ttl_s), ttl_ms]
        reply = await self._x.run(
            "compare_and_set", [K.register_key(self._x.prefix, name)], [num(now), *args]
        )
        if reply is None:
            return None
        return reply.decode() if isinstance(reply, bytes) else str(reply)

    async def release_slot(self, key: str, holder: str) -> None:
        await self._x.commands([("ZREM", K.slots_key(self._x.prefix, key), holder)])

    async def join(
        self, group_id: str, member_id: str, index: int, total: int, outcome: bytes
    ) -> list[bytes] | None:
        value = f"{index:0{INDEX_DIGITS}d}".encode() + outcome
        ttl_ms = str(math.ceil(self._retention_s * 1000))
        args = [member_id, value, str(total), ttl_ms]
        reply = await self._x.run("join", [K.chord_key(self._x.prefix, group_id)], args)
        if reply is None:
            return None
        values = sorted(v if isinstance(v, bytes) else v.encode() for v in reply)
        return [v[INDEX_DIGITS:] for v in values]

    async def outbox(self, limit: int) -> list[Ended]:
        if limit <= 0:
            return []
        names = await self._x.known_queues()
        calls: list[Call] = [("outbox", self._x.q(q), [str(limit)]) for q in names]
        found: list[tuple[float, str, Any, Any]] = []
        for reply in await self._x.run_many(calls):
            for i in range(0, len(reply), 4):
                found.append((float(reply[i + 1]), text(reply[i]), reply[i + 2], reply[i + 3]))
        return [
            Ended(member[MEMBER_ID_AT:], JobState(text(state)), bytes(payload))
            for _, member, state, payload in heapq.nsmallest(limit, found)
        ]

    async def clear_outbox(self, job_ids: Sequence[str]) -> list[str]:
        """One script per known queue, pipelined: the ids may be of any queue."""
        if not job_ids:
            return []
        names = await self._x.known_queues()
        calls: list[Call] = [("clear_outbox", self._x.q(q), list(job_ids)) for q in names]
        return [text(job_id) for reply in await self._x.run_many(calls) for job_id in reply]
