"""Operations on Redis: pause flags and attempt history.

Pause flags are one global hash (`keys.paused_key`); a job's history is a list of its
own, hash-tagged by the job (`keys.attempts_key`), appended to by
`scripts/record_attempt.lua` and lapsing after the broker's retention, like progress.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from offload.brokers.redis import keys as K

if TYPE_CHECKING:
    from offload.brokers.redis import RedisBroker

__all__ = ["attempt_records", "paused", "record_attempt", "set_paused"]


async def set_paused(broker: RedisBroker, name: str, paused: bool) -> bool:
    key = K.paused_key(broker.prefix)
    if paused:
        command: tuple[str, ...] = ("HSETNX", key, name, repr(broker.clock.now()))
    else:
        command = ("HDEL", key, name)
    [changed] = await broker._commands([command])
    return bool(changed)


async def paused(broker: RedisBroker) -> dict[str, float]:
    [flags] = await broker._commands([("HGETALL", K.paused_key(broker.prefix))])
    return {_text(name): float(at) for name, at in flags.items()}


async def record_attempt(
    broker: RedisBroker, job_id: str, token: str, record: bytes, keep: int
) -> None:
    ttl_ms = str(max(int(broker.retention_s * 1000), 1))
    key = K.attempts_key(broker.prefix, job_id)
    await broker._run("record_attempt", [key], [token, record, str(keep), ttl_ms])


async def attempt_records(broker: RedisBroker, job_id: str) -> tuple[list[bytes], int]:
    [entries] = await broker._commands([("LRANGE", K.attempts_key(broker.prefix, job_id), 0, -1)])
    records: list[bytes] = []
    first = 0
    for entry in entries:
        number, _token, record = bytes(entry).split(b"\n", 2)
        first = first or int(number)
        records.append(record)
    return records, max(first - 1, 0)


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value
