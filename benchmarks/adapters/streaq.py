"""streaq on Redis (streams, consumer groups, Lua).

Workers: `streaq run adapters.streaq.worker --workers K`, `concurrency=100`.
Bulk: `Worker.enqueue_many([...])` (one pipeline).
"""

from __future__ import annotations

from datetime import timedelta

from streaq import Worker

from adapters import _probe
from adapters.base import BULK_CHUNK, AsyncAdapter, tool

worker = Worker(redis_url=_probe.redis_url(), concurrency=100)


@worker.task(name="noop")
async def noop(t: float) -> None:
    _probe.record(t)
    await _probe.aio()


class StreaqAdapter(AsyncAdapter):
    name = "streaq"
    config = "`streaq run worker --workers K`, concurrency=100 per process"
    bulk_api = "`Worker.enqueue_many([...])` (one pipeline)"

    async def _connect(self) -> None:
        self._ctx = worker.__asynccontextmanager__()
        await self._ctx.__aenter__()

    async def _aone(self, t: float) -> None:
        await noop.enqueue(t)

    async def _abulk(self, n: int) -> None:
        await worker.enqueue_many([noop.enqueue(0.0) for _ in range(n)])

    async def _adelayed(self, n: int, delay_s: float) -> None:
        delay = timedelta(seconds=delay_s)
        for start in range(0, n, BULK_CHUNK):
            for _ in range(min(BULK_CHUNK, n - start)):
                await noop.enqueue(0.0).start(delay=delay)

    async def _aclose(self) -> None:
        await self._ctx.__aexit__(None, None, None)

    def workers(self, processes: int) -> list[list[str]]:
        return [[tool("streaq"), "run", "adapters.streaq:worker", "--workers", str(processes)]]
