"""SAQ on Redis.

Workers: `saq adapters.saq.settings --workers K`, `concurrency=100`. SAQ dequeues
with a blocking `BLMOVE` (no polling). SAQ's only multi-job call, `Queue.map`, waits
for the results, so bulk enqueue is n/a.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from saq import Queue

from adapters import _probe
from adapters.base import AsyncAdapter, tool


async def noop(ctx: dict[str, Any], *, t: float) -> None:
    _probe.record(t)
    await _probe.aio()


settings = {
    "queue": Queue.from_url(_probe.redis_url()),
    "functions": [noop],
    "concurrency": 100,
}


class SaqAdapter(AsyncAdapter):
    name = "SAQ"
    config = "`saq settings --workers K`, concurrency=100 per process"

    async def _connect(self) -> None:
        self.queue = Queue.from_url(self.redis_url)
        await self.queue.connect()

    async def _aone(self, t: float) -> None:
        await self.queue.enqueue("noop", t=t)

    async def _adelayed(self, n: int, delay_s: float) -> None:
        at = int(time.time() + delay_s)
        for start in range(0, n, 100):
            await asyncio.gather(
                *(
                    self.queue.enqueue("noop", t=0.0, scheduled=at)
                    for _ in range(min(100, n - start))
                )
            )

    async def _aclose(self) -> None:
        await self.queue.disconnect()

    def workers(self, processes: int) -> list[list[str]]:
        return [[tool("saq"), "adapters.saq.settings", "--workers", str(processes), "-q"]]
