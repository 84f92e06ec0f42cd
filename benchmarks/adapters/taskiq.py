"""Taskiq with taskiq-redis's `ListQueueBroker` (a Redis list: the lightest of its
Redis brokers; `RedisStreamBroker` adds acknowledgements).

Workers: `taskiq worker adapters.taskiq:broker --workers K --max-async-tasks 100
--no-parse` (skip pydantic parsing of arguments). No result backend. Taskiq has no
bulk enqueue API (n/a), and delayed jobs need its separate scheduler process and a
schedule source, so the delayed-depth row is n/a.
"""

from __future__ import annotations

from taskiq_redis import ListQueueBroker

from adapters import _probe
from adapters.base import AsyncAdapter, tool

broker = ListQueueBroker(_probe.redis_url())


@broker.task(task_name="noop")
async def noop(t: float) -> None:
    _probe.record(t)
    await _probe.aio()


class TaskiqAdapter(AsyncAdapter):
    name = "Taskiq"
    config = (
        "taskiq-redis ListQueueBroker, `taskiq worker --workers K --max-async-tasks 100 "
        "--no-parse`, no result backend"
    )
    supports_delay = False

    async def _connect(self) -> None:
        await broker.startup()

    async def _aone(self, t: float) -> None:
        await noop.kiq(t)

    async def _aclose(self) -> None:
        await broker.shutdown()

    def workers(self, processes: int) -> list[list[str]]:
        return [
            [tool("taskiq"), "worker", "adapters.taskiq:broker", "--workers", str(processes),
             "--max-async-tasks", "100", "--no-parse", "--log-level", "WARNING"]
        ]  # fmt: skip
