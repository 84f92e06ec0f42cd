"""A `Worker` running in the background of an async test, stopped and awaited at the
end of the block (the test's own loop; for tests that drive `Worker.run`, not `drain`)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

from offload import Offload, Worker

__all__ = ["working"]


@contextlib.asynccontextmanager
async def working(
    app: Offload, *, stop_within_s: float = 60, **options: Any
) -> AsyncIterator[Worker]:
    """`Worker(app, **options)` running until the block ends."""
    worker = Worker(app, **options)
    running = asyncio.create_task(worker.run())
    try:
        yield worker
    finally:
        worker.stop()
        await asyncio.wait_for(running, stop_within_s)
