"""The Lua scripts of `scripts/`, loaded once per connection and called by SHA.

Each script is `_members.lua`, `_inbox.lua` and `_lib.lua` followed by its own text,
so the shared helpers travel with it and every script stays one atomic call; the lean
ones (`LEAN`: `enqueue_one`) leave out `_lib.lua`, since Redis runs a script's whole
text, every definition of `_lib.lua` included, on every call; a script with a
`--@helpers` line gets them there instead of in front. Scripts are loaded at connect; after a
Redis restart (which forgets them) the first call gets NOSCRIPT, loads them all again
and retries once.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Sequence
from importlib.resources import files
from typing import Any, TypeAlias

from redis import Redis as SyncRedis
from redis.asyncio import Redis
from redis.asyncio.cluster import RedisCluster
from redis.exceptions import NoScriptError

__all__ = ["Call", "Client", "Scripts", "pipeline"]

Client: TypeAlias = "Redis | RedisCluster"
#: One script call: (script name, keys, args).
Call: TypeAlias = tuple[str, Sequence[str], Sequence[str | bytes]]

_NAMES = (
    "enqueue",
    "reserve",
    "extend",
    "ack",
    "retry",
    "bury",
    "release",
    "cancel",
    "replay_dead",
    "purge_dead",
    "sweep",
    "counts",
    "list_jobs",
    "worker_register",
    "worker_forget",
    "workers",
    "defer",
    "take_rate",
    "acquire_slot",
    "compare_and_set",
    "join",
    "cancel_running",
    "outbox",
    "clear_outbox",
    "watch",
    "record_attempt",
    "unpark",
    "enqueue_one",
    "expand",
)

#: Scripts loaded without `_lib.lua` (see the module docstring).
LEAN = frozenset({"enqueue_one"})


#: The line of a script at which its helpers go, when not in front (`enqueue_one.lua`
#: runs its plain case before defining them).
HELPERS_AT = "--@helpers\n"


def _source(name: str) -> str:
    folder = files("offload.brokers.redis") / "scripts"
    parts = ["_members", "_inbox"] if name in LEAN else ["_members", "_inbox", "_lib"]
    helpers = "\n".join((folder / f"{part}.lua").read_text(encoding="utf-8") for part in parts)
    own = (folder / f"{name}.lua").read_text(encoding="utf-8")
    if HELPERS_AT in own:
        return own.replace(HELPERS_AT, helpers + "\n", 1)
    return helpers + "\n" + own


def pipeline(client: Client) -> Any:
    """A pipeline without MULTI: one round trip per node, no atomicity across calls."""
    if isinstance(client, Redis):
        return client.pipeline(transaction=False)
    return client.pipeline()


class Scripts:
    """The sources and SHA-1 digests of every script, read from the package once."""

    def __init__(self) -> None:
        self.sources = {name: _source(name) for name in _NAMES}
        self.shas = {
            name: hashlib.sha1(src.encode(), usedforsecurity=False).hexdigest()
            for name, src in self.sources.items()
        }

    async def load(self, client: Client) -> None:
        """SCRIPT LOAD every script (on every primary of a cluster)."""
        for source in self.sources.values():
            await client.script_load(source)

    async def run(self, client: Client, name: str, keys: Sequence[str], args: Sequence[Any]) -> Any:
        """Call one script; on NOSCRIPT load them all and call it again."""
        try:
            return await client.evalsha(self.shas[name], len(keys), *keys, *args)
        except NoScriptError:
            await self.load(client)
            return await client.evalsha(self.shas[name], len(keys), *keys, *args)

    async def run_many(self, client: Client, calls: Sequence[Call]) -> list[Any]:
        """Call several scripts in one pipeline (one round trip); on NOSCRIPT load them
        all and send the pipeline again. On a cluster, whose pipelines refuse EVALSHA,
        the calls go out concurrently instead. Results are in the calls' order."""
        if not calls:
            return []
        if len(calls) == 1:
            name, keys, args = calls[0]
            return [await self.run(client, name, keys, args)]
        if not isinstance(client, Redis):  # a cluster pipeline refuses EVALSHA
            return list(await asyncio.gather(*(self.run(client, *call) for call in calls)))
        try:
            return await self._pipeline(client, calls)
        except NoScriptError:
            await self.load(client)
            return await self._pipeline(client, calls)

    def run_many_blocking(self, client: SyncRedis, calls: Sequence[Call]) -> list[Any]:
        """`run_many` on a plain (non-asyncio) client of a single Redis, from the
        calling thread (`_blocking.py`)."""

        def send() -> list[Any]:
            if len(calls) == 1:  # a pipeline of one costs ~10 µs more on the client
                name, keys, args = calls[0]
                return [client.evalsha(self.shas[name], len(keys), *keys, *args)]
            pipe = client.pipeline(transaction=False)
            for name, keys, args in calls:
                pipe.evalsha(self.shas[name], len(keys), *keys, *args)
            return list(pipe.execute())

        try:
            return send()
        except NoScriptError:  # Redis restarted and forgot the scripts
            for source in self.sources.values():
                client.script_load(source)
            return send()

    async def _pipeline(self, client: Client, calls: Sequence[Call]) -> list[Any]:
        pipe = pipeline(client)
        for name, keys, args in calls:
            pipe.evalsha(self.shas[name], len(keys), *keys, *args)
        return list(await pipe.execute())
