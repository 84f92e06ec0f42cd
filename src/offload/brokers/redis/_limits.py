"""Flow control on Redis: rate limits (`take_rate.lua`), concurrency slots
(`acquire_slot.lua`), the max-depth reply of `enqueue.lua`, and the registers of
`compare_and_set.lua` (the scheduler's coordination).

Each limit is one key of its own hash tag (`keys.rate_key`, `keys.slots_key`), so a
script touches one slot and runs unchanged on Redis Cluster.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from offload.brokers.redis import keys as K
from offload.brokers.redis._records import num
from offload.errors import QueueFull
from offload.limits import EPSILON_S

if TYPE_CHECKING:
    from offload.brokers.redis import RedisBroker

__all__ = ["acquire_slot", "check_depth", "compare_and_set", "take_rate"]


async def take_rate(broker: RedisBroker, key: str, limit: int, per_s: float) -> float:
    args = [num(broker.clock.now()), str(limit), num(per_s), num(EPSILON_S)]
    reply = await broker._run("take_rate", [K.rate_key(broker.prefix, key)], args)
    return float(reply)


async def acquire_slot(
    broker: RedisBroker, key: str, limit: int, holder: str, ttl_s: float
) -> bool:
    now = broker.clock.now()
    ttl_ms = str(math.ceil(ttl_s * 1000) + 1000)
    args = [num(now), str(limit), holder, num(now + ttl_s), ttl_ms]
    return bool(await broker._run("acquire_slot", [K.slots_key(broker.prefix, key)], args))


async def compare_and_set(
    broker: RedisBroker, name: str, expected: str | None, new: str, ttl_s: float
) -> str | None:
    now = broker.clock.now()
    ttl_ms = str(math.ceil(ttl_s * 1000) + 1000)
    args = ["0" if expected is None else "1", expected or "", new, num(now + ttl_s), ttl_ms]
    reply = await broker._run(
        "compare_and_set", [K.register_key(broker.prefix, name)], [num(now), *args]
    )
    if reply is None:
        return None
    return reply.decode() if isinstance(reply, bytes) else str(reply)


def check_depth(queues: Sequence[str], replies: Sequence[Any], max_depth: int | None) -> None:
    """Raise QueueFull for the first queue whose `enqueue` script refused the jobs."""
    if max_depth is None:
        return
    for queue, reply in zip(queues, replies, strict=True):
        if reply and reply[0] == -1:
            raise QueueFull(f"queue {queue!r} holds {reply[1]} waiting jobs (max {max_depth})")
