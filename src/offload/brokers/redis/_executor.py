"""`Executor`: how the Redis broker and its parts reach the server.

It runs a Lua script of `scripts/` (`run`), several in one pipeline (`run_many`), or
plain commands in one pipeline (`commands`), with Redis errors made ours; and it knows
the key schema of the broker's prefix (`keys.py`). The parts (`_inspect.py`,
`_flow.py`, `_signals.py`, `_workflows.py`) are built on one, so each can be read (and
tested) without the broker, and none reaches into it.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from offload.brokers.redis import keys as K
from offload.brokers.redis._connection import errors
from offload.brokers.redis._records import text
from offload.brokers.redis._scripts import Call, Client, Scripts, pipeline

__all__ = ["SCRIPTS", "Executor"]

#: The scripts, loaded on each connection at connect.
SCRIPTS = Scripts()


class Executor:
    """Scripts and commands on the client `client()` gives (this event loop's, opened
    on first use); `where` (the server, never the URL's credentials) names it in errors."""

    def __init__(self, client: Callable[[], Awaitable[Client]], where: str, prefix: str) -> None:
        self.client = client
        self.where = where
        self.prefix = prefix
        self.global_keys = K.global_keys(prefix)
        self.ended_channel = K.ended_channel(prefix)

    def q(self, queue: str) -> K.QueueKeys:
        """The keys of `queue`."""
        return K.queue_keys(self.prefix, queue)

    def one_keys(self, queue: str) -> tuple[str, ...]:
        """The keys of `queue` that `enqueue_one.lua` takes."""
        return K.one_keys(self.prefix, queue)

    def channel(self, queue: str) -> str:
        """The pub/sub channel of new work in `queue`."""
        return K.channel(self.prefix, queue)

    async def run(self, name: str, keys: Sequence[str], args: Sequence[Any]) -> Any:
        client = await self.client()
        with errors(self.where):
            return await SCRIPTS.run(client, name, keys, args)

    async def run_many(self, calls: Sequence[Call]) -> list[Any]:
        client = await self.client()
        with errors(self.where):
            return await SCRIPTS.run_many(client, calls)

    async def commands(self, commands: Sequence[tuple[Any, ...]]) -> list[Any]:
        """Plain commands in one pipeline."""
        client = await self.client()
        with errors(self.where):
            pipe = pipeline(client)
            for command in commands:
                pipe.execute_command(*command)
            return list(await pipe.execute()) if commands else []

    async def known_queues(self) -> list[str]:
        """Every queue that holds or held a job, sorted."""
        client = await self.client()
        with errors(self.where):
            members = await client.smembers(self.global_keys.queues)
        return sorted(text(m) for m in members)
