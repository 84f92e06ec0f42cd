"""`Executor`: how the Redis broker and its parts reach the server.

It runs a Lua script of `scripts/` (`run`), several in one pipeline (`run_many`), or
plain commands in one pipeline (`commands`), with Redis errors made ours; and it knows
the key schema of the broker's prefix (`keys.py`). The parts (`_inspect.py`,
`_flow.py`, `_signals.py`, `_workflows.py`) are built on one, so each can be read (and
tested) without the broker, and none reaches into it.

`run_one` sends one script call on a connection of its own (a single Redis only),
without redis-py's command machinery, as the sync producer's direct connection does
(`_blocking.py`, which says why); a call that finds it busy, or fails on it, goes
through the pooled client, which reconnects, reloads scripts and retries.
"""

from __future__ import annotations

import contextlib
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from redis.asyncio import Redis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import NoScriptError, ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from offload.brokers.redis import keys as K
from offload.brokers.redis._connection import errors
from offload.brokers.redis._records import text
from offload.brokers.redis._scripts import Call, Client, Scripts, pipeline

__all__ = ["SCRIPTS", "Executor"]

#: The scripts, loaded on each connection at connect.
SCRIPTS = Scripts()

#: `_direct`'s answer when the call must go through the pooled client.
_FAILED: Any = object()


class Executor:
    """Scripts and commands on the client `client()` gives (this event loop's, opened
    on first use); `where` (the server, never the URL's credentials) names it in errors."""

    def __init__(self, client: Callable[[], Awaitable[Client]], where: str, prefix: str) -> None:
        self.client = client
        self.where = where
        self.prefix = prefix
        self.global_keys = K.global_keys(prefix)
        self.ended_channel = K.ended_channel(prefix)
        # `run_one`'s connection, the client whose pool made it (a new client, after a
        # loop change, makes a new one), and whether a call is using it now.
        self._direct_conn: Any = None  # a redis-py asyncio Connection (untyped methods)
        self._direct_owner: Client | None = None
        self._direct_busy = False

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

    async def run_one(self, call: Call) -> Any:
        """One script `call`: on the direct connection of a single Redis when it is
        free, else (or if it fails there) through the pooled client."""
        client = await self.client()
        if isinstance(client, Redis) and not self._direct_busy:
            self._direct_busy = True
            try:
                with errors(self.where):
                    reply = await self._direct(client, call)
            finally:
                self._direct_busy = False
            if reply is not _FAILED:
                return reply
        return (await self.run_many([call]))[0]

    async def _direct(self, client: Redis, call: Call) -> Any:
        conn = self._direct_conn
        if conn is None or self._direct_owner is not client:
            pool = client.connection_pool
            conn = self._direct_conn = pool.connection_class(**pool.connection_kwargs)
            self._direct_owner = client
        name, keys, args = call
        try:
            if not conn.is_connected:
                await conn.connect()
            command = conn.pack_command("EVALSHA", SCRIPTS.shas[name], len(keys), *keys, *args)
            await conn.send_packed_command(command, check_health=False)
            return await conn.read_response()
        except NoScriptError:  # Redis restarted: `run_many` loads the scripts
            return _FAILED
        except ResponseError:  # the whole reply was read: the connection stays good
            raise
        except (RedisConnectionError, RedisTimeoutError, OSError):
            await self._drop_direct(conn)
            return _FAILED
        except BaseException:  # cancelled: its reply may still be unread
            await self._drop_direct(conn)
            raise

    async def _drop_direct(self, conn: Any) -> None:
        """Never use `conn` again, and close it."""
        self._direct_conn = None
        with contextlib.suppress(Exception):
            await conn.disconnect(nowait=True)

    async def close_direct(self) -> None:
        """Close the direct connection (the broker's `close`)."""
        conn, self._direct_owner = self._direct_conn, None
        if conn is not None:
            await self._drop_direct(conn)

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
