"""Operations on Redis: pause flags and attempt history.

Pause flags are one global hash (`keys.paused_key`); a job's history is a list of its
own, hash-tagged by the job (`keys.attempts_key`), appended to by
`scripts/record_attempt.lua` and lapsing after the broker's retention, like progress.
"""

from __future__ import annotations

from offload.brokers.redis import keys as K
from offload.brokers.redis._executor import Executor
from offload.brokers.redis._records import text
from offload.clock import Clock

#: How `offload.pausing` names a queue's flag (`queue:<name>`).
QUEUE_FLAG = "queue:"

__all__ = ["Operations"]


class Operations:
    """Pause flags (the `Fleet` role) and attempt records (`Inspection`), on an `Executor`."""

    def __init__(self, x: Executor, clock: Clock, retention_s: float) -> None:
        self._x = x
        self._clock = clock
        self._retention_s = retention_s

    async def set_paused(self, name: str, paused: bool) -> bool:
        """The flag in the global hash, and a paused queue's copy in its own slot,
        which `enqueue.lua` reads: a worker parked before the pause is handed nothing
        (workers read the global flags before they reserve or park)."""
        key = K.paused_key(self._x.prefix)
        commands: list[tuple[str, ...]] = []
        if paused:
            commands.append(("HSETNX", key, name, repr(self._clock.now())))
        else:
            commands.append(("HDEL", key, name))
        if name.startswith(QUEUE_FLAG):
            mark = K.queue_keys(self._x.prefix, name.removeprefix(QUEUE_FLAG)).paused
            commands.append(("SET", mark, "1") if paused else ("DEL", mark))
        changed, *_ = await self._x.commands(commands)
        return bool(changed)

    async def paused(self) -> dict[str, float]:
        [flags] = await self._x.commands([("HGETALL", K.paused_key(self._x.prefix))])
        return {text(name): float(at) for name, at in flags.items()}

    async def record_attempt(self, job_id: str, token: str, record: bytes, keep: int) -> None:
        ttl_ms = str(max(int(self._retention_s * 1000), 1))
        key = K.attempts_key(self._x.prefix, job_id)
        await self._x.run("record_attempt", [key], [token, record, str(keep), ttl_ms])

    async def attempt_records(self, job_id: str) -> tuple[list[bytes], int]:
        key = K.attempts_key(self._x.prefix, job_id)
        [entries] = await self._x.commands([("LRANGE", key, 0, -1)])
        records: list[bytes] = []
        first = 0
        for entry in entries:
            number, _token, record = bytes(entry).split(b"\n", 2)
            first = first or int(number)
            records.append(record)
        return records, max(first - 1, 0)
