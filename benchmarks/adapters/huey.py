"""Huey on Redis (`RedisHuey`, blocking dequeue, results off).

Workers: one process = `huey_consumer adapters.huey.huey -k thread -w 8`; two
processes = `-k process -w 2`. Huey's Redis storage blocks on `BRPOP` (no polling
delay). Huey has no bulk enqueue: `task.map()` enqueues one by one, so bulk is
measured through it and says so.
"""

from __future__ import annotations

from huey import RedisHuey

from adapters import _probe
from adapters.base import Adapter, tool

huey = RedisHuey("bench", url=_probe.redis_url(), results=False)


@huey.task(name="noop")
def noop(t: float) -> None:
    _probe.record(t)
    _probe.io()


class HueyAdapter(Adapter):
    name = "Huey"
    config = (
        "`huey_consumer -k thread -w 8` (1 process); `-k process -w 2` (2 processes); "
        "RedisHuey blocking dequeue, results=False"
    )
    bulk_api = "`task.map([...])`"

    def _one(self, t: float) -> None:
        noop(t)

    def _bulk(self, n: int) -> None:
        noop.map([0.0] * n)

    def _delayed(self, n: int, delay_s: float) -> None:
        for _ in range(n):
            noop.schedule(args=(0.0,), delay=delay_s)

    def workers(self, processes: int) -> list[list[str]]:
        kind = (
            ["-k", "thread", "-w", "8"]
            if processes == 1
            else ["-k", "process", "-w", str(processes)]
        )
        return [[tool("huey_consumer"), "adapters.huey.huey", *kind, "-q", "-n"]]
