"""The interface every system's adapter implements, and helpers for async systems.

An adapter lives in the driver's phase process. It enqueues no-op jobs (each job calls
`adapters._probe.record(t)` with `t` the enqueue timestamp, or 0.0 when latency is not
measured) and says how to start that system's workers as real subprocesses, the way
its documentation says.
"""

from __future__ import annotations

import asyncio
import os
import sys
import time
from collections.abc import Coroutine
from pathlib import Path
from typing import Any

#: Jobs per bulk call (every system with a bulk API gets the same batch size).
BULK_CHUNK = 1000

BENCH_DIR = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent


class Adapter:
    """Base: subclasses implement `_one`, optionally `_bulk` / `_delayed`, and `workers`."""

    #: Name in the table.
    name = "?"
    #: One line: how its workers run and why this is its fastest documented setting.
    config = ""
    #: How bulk enqueue is done, or None when the system has no bulk API (cell: n/a).
    bulk_api: str | None = None
    #: Whether the system can enqueue delayed jobs (for the delayed-depth row).
    supports_delay = True
    #: Whether its queued jobs live in the benchmark's Redis (whose `used_memory` then
    #: gives the bytes per queued job); False for RabbitMQ, whose cell is n/a.
    queues_in_redis = True

    def __init__(self, redis_url: str, workdir: Path) -> None:
        self.redis_url = redis_url
        self.workdir = workdir

    # -- producer (override) -----------------------------------------------------------

    def _one(self, t: float) -> None:
        raise NotImplementedError

    def _bulk(self, n: int) -> None:
        raise NotImplementedError

    def _delayed(self, n: int, delay_s: float) -> None:
        raise NotImplementedError

    # -- producer (used by the driver) -------------------------------------------------

    def enqueue_one(self, n: int) -> None:
        """`n` single enqueue calls, one job each."""
        for _ in range(n):
            self._one(0.0)

    def enqueue_bulk(self, n: int) -> None:
        """`n` jobs in bulk calls of `BULK_CHUNK` (only if `bulk_api`)."""
        for start in range(0, n, BULK_CHUNK):
            self._bulk(min(BULK_CHUNK, n - start))

    def fill(self, n: int) -> None:
        """Queue `n` jobs as fast as the system allows (untimed set-up)."""
        if self.bulk_api:
            self.enqueue_bulk(n)
        else:
            self.enqueue_one(n)

    def enqueue_delayed(self, n: int, delay_s: float) -> None:
        self._delayed(n, delay_s)

    def enqueue_paced(self, n: int, rate: float) -> None:
        """`n` single enqueues at a steady `rate` per second, each stamped with its time."""
        start = time.perf_counter()
        for i in range(n):
            pause = start + i / rate - time.perf_counter()
            if pause > 0:
                time.sleep(pause)
            self._one(time.time())

    # -- workers -----------------------------------------------------------------------

    def workers(self, processes: int) -> list[list[str]]:
        """argv of each worker subprocess to start for `processes` worker processes."""
        raise NotImplementedError

    def worker_env(self) -> dict[str, str]:
        env = dict(os.environ)
        # The caller's PYTHONPATH stays behind ours (e.g. another checkout's src/).
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(BENCH_DIR), env.get("PYTHONPATH")]))
        env["BENCH_REDIS_URL"] = self.redis_url
        return env

    def storage_bytes(self) -> int | None:
        """Broker memory in use; None to measure Redis `used_memory`."""
        return None

    def close(self) -> None:
        pass


class AsyncAdapter(Adapter):
    """For asyncio clients: every producer loop runs inside one event loop."""

    def __init__(self, redis_url: str, workdir: Path) -> None:
        super().__init__(redis_url, workdir)
        self.loop = asyncio.new_event_loop()
        self.run(self._connect())

    def run(self, coro: Coroutine[Any, Any, Any]) -> Any:
        return self.loop.run_until_complete(coro)

    async def _connect(self) -> None:
        pass

    async def _aclose(self) -> None:
        pass

    async def _aone(self, t: float) -> None:
        raise NotImplementedError

    async def _abulk(self, n: int) -> None:
        raise NotImplementedError

    async def _adelayed(self, n: int, delay_s: float) -> None:
        raise NotImplementedError

    def enqueue_one(self, n: int) -> None:
        async def go() -> None:
            for _ in range(n):
                await self._aone(0.0)

        self.run(go())

    def enqueue_bulk(self, n: int) -> None:
        async def go() -> None:
            for start in range(0, n, BULK_CHUNK):
                await self._abulk(min(BULK_CHUNK, n - start))

        self.run(go())

    def fill(self, n: int) -> None:
        if self.bulk_api:
            self.enqueue_bulk(n)
            return

        async def go() -> None:  # untimed set-up: 100 enqueues in flight at once
            for start in range(0, n, 100):
                await asyncio.gather(*(self._aone(0.0) for _ in range(min(100, n - start))))

        self.run(go())

    def enqueue_delayed(self, n: int, delay_s: float) -> None:
        self.run(self._adelayed(n, delay_s))

    def enqueue_paced(self, n: int, rate: float) -> None:
        async def go() -> None:
            start = time.perf_counter()
            for i in range(n):
                pause = start + i / rate - time.perf_counter()
                if pause > 0:
                    await asyncio.sleep(pause)
                await self._aone(time.time())

        self.run(go())

    def close(self) -> None:
        self.run(self._aclose())
        self.loop.close()


def python() -> str:
    return sys.executable


def tool(name: str) -> str:
    """A console script of the benchmark environment."""
    return str(BIN / name)
