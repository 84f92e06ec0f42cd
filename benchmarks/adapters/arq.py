"""arq on Redis.

Workers: `arq adapters.arq.WorkerSettings`, one process each (arq has no
multi-process option, so 2 processes = 2 `arq` commands), `max_jobs=100`,
`keep_result=0` (results not kept), `poll_delay=0.01` s (arq polls its sorted-set
queue; the default 0.5 s would dominate latency, so we use the documented knob).
arq has no bulk enqueue API: n/a.
"""

from __future__ import annotations

import asyncio
from typing import Any

from arq import create_pool
from arq.connections import RedisSettings

from adapters import _probe
from adapters.base import AsyncAdapter, tool


async def noop(ctx: dict[str, Any], t: float) -> None:
    _probe.record(t)
    await _probe.aio()


class WorkerSettings:
    functions = [noop]  # noqa: RUF012
    redis_settings = RedisSettings.from_dsn(_probe.redis_url())
    max_jobs = 100
    keep_result = 0
    poll_delay = 0.01


class ArqAdapter(AsyncAdapter):
    name = "arq"
    config = "`arq WorkerSettings` per process, max_jobs=100, keep_result=0, poll_delay=0.01 s"

    async def _connect(self) -> None:
        self.pool = await create_pool(RedisSettings.from_dsn(self.redis_url))

    async def _aone(self, t: float) -> None:
        await self.pool.enqueue_job("noop", t)

    async def _adelayed(self, n: int, delay_s: float) -> None:
        for start in range(0, n, 100):
            await asyncio.gather(
                *(
                    self.pool.enqueue_job("noop", 0.0, _defer_by=delay_s)
                    for _ in range(min(100, n - start))
                )
            )

    async def _aclose(self) -> None:
        await self.pool.aclose()

    def workers(self, processes: int) -> list[list[str]]:
        return [[tool("arq"), "adapters.arq.WorkerSettings"] for _ in range(processes)]
