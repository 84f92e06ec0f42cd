"""Chord joins on Redis (`Broker.join`, `join.lua`).

A group's members are one hash, `P:{%chord:<group id>}:members` (member id → its
zero-padded index followed by its outcome), hash-tagged by the group, so the script
touches one slot and runs unchanged on Redis Cluster. HSETNX keeps a member's first
outcome; the hash lapses by EXPIRE after the broker's retention.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

from offload.brokers.redis import keys as K

if TYPE_CHECKING:
    from offload.brokers.redis import RedisBroker

__all__ = ["join"]

#: Digits of the index stored before each outcome (sorts up to 10**10 members).
INDEX_DIGITS = 10


async def join(
    broker: RedisBroker, group_id: str, member_id: str, index: int, total: int, outcome: bytes
) -> list[bytes] | None:
    value = f"{index:0{INDEX_DIGITS}d}".encode() + outcome
    ttl_ms = str(math.ceil(broker.retention_s * 1000))
    args = [member_id, value, str(total), ttl_ms]
    reply = await broker._run("join", [K.chord_key(broker.prefix, group_id)], args)
    if reply is None:
        return None
    values = sorted(v if isinstance(v, bytes) else v.encode() for v in reply)
    return [v[INDEX_DIGITS:] for v in values]
