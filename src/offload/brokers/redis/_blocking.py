"""Sync producers without the portal's thread hop (`Broker.enqueue_blocking`).

A sync `task.enqueue()` used to hand its coroutine to the portal loop and wait for it:
a thread hop and the asyncio client's packing cost most of a call (profile in
`benchmarks/README.md`). Here the calling thread runs the same `enqueue.lua` on a
plain, thread-safe `redis.Redis` client. It takes only the plain case: a single
Redis (a cluster keeps the portal path), queues this broker has recorded already, and
jobs outside workflows (`RedisBroker.enqueue_blocking` decides); anything else goes
through `enqueue`, which records queues and indexes workflows first.

A call of one script (one job, `enqueue_one.lua`) goes out on a connection of its own,
without redis-py's command machinery: packed by the connection (with hiredis), sent,
its reply read. redis-py's `execute_command` (pool checkout with a readiness poll,
retry wrapper, observability hooks) cost more client CPU per call than a raw `LPUSH`'s
whole client side (issue 16, benchmarks/README.md). One thread uses that connection at
a time; a thread that finds it busy, and any call that fails on it (a connection
error, NOSCRIPT after a Redis restart), goes the ordinary way, which reconnects,
reloads the scripts and retries: safe, since `enqueue` is idempotent by job id.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Sequence
from typing import Any

from redis import Redis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import NoScriptError, ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from offload.brokers.redis._connection import RedisURL, blocking_client, errors
from offload.brokers.redis._executor import SCRIPTS
from offload.brokers.redis._scripts import Call

__all__ = ["BlockingClient"]

#: `_direct_call`'s answer when the call must go the ordinary way.
_FAILED: Any = object()

#: Packs a command of str and bytes alone, without redis-py's per-argument pass.
_pack: Callable[[tuple[Any, ...]], bytes] | None
try:
    from hiredis import pack_command as _hiredis_pack

    _pack = _hiredis_pack
except ImportError:  # pragma: no cover - hiredis comes with the redis extra
    _pack = None


class BlockingClient:
    """A plain client of `options`, opened on first use, shared by every thread."""

    def __init__(self, options: RedisURL, where: str) -> None:
        self._options = options
        self._where = where
        self._lock = threading.Lock()
        self._client: Redis | None = None
        # The connection of `run_one`, held by one thread at a time, and the process
        # that opened it (a forked child opens its own: the socket is the parent's).
        self._direct: Any = None  # a redis-py Connection (its methods are untyped)
        self._direct_pid = 0
        self._direct_lock = threading.Lock()

    def get(self) -> Redis:
        with self._lock:
            if self._client is None:
                self._client = blocking_client(self._options)
            return self._client

    def run_many(self, calls: Sequence[Call]) -> list[Any]:
        """The scripts `calls`, in one pipeline from the calling thread."""
        with errors(self._where):
            return SCRIPTS.run_many_blocking(self.get(), calls)

    def run_one(self, call: Call) -> Any:
        """One script `call` from the calling thread: on the direct connection when it
        is free, else (or if it fails there) as `run_many` sends it."""
        if self._direct_lock.acquire(blocking=False):
            try:
                with errors(self._where):
                    reply = self._direct_call(call)
            finally:
                self._direct_lock.release()
            if reply is not _FAILED:
                return reply
        return self.run_many([call])[0]

    def _direct_call(self, call: Call) -> Any:
        """The reply of `call` on the direct connection, or `_FAILED` if it could not
        be had there (the connection is then dropped, for a fresh one next time)."""
        conn = self._direct
        if conn is None or self._direct_pid != os.getpid():
            pool = self.get().connection_pool
            conn = self._direct = pool.connection_class(**pool.connection_kwargs)
            self._direct_pid = os.getpid()
        name, keys, args = call
        try:
            conn.connect()  # a no-op once connected
            command = ("EVALSHA", SCRIPTS.shas[name], str(len(keys)), *keys, *args)
            packed = [_pack(command)] if _pack is not None else conn.pack_command(*command)
            conn.send_packed_command(packed, check_health=False)
            return conn.read_response()
        except NoScriptError:  # Redis restarted: `run_many` loads the scripts
            return _FAILED
        except ResponseError:  # the whole reply was read: the connection stays good
            raise
        except (RedisConnectionError, RedisTimeoutError, OSError):
            self._drop(conn)
            return _FAILED
        except BaseException:  # e.g. KeyboardInterrupt: its reply may still be unread
            self._drop(conn)
            raise

    def _drop(self, conn: Any) -> None:
        conn.disconnect()
        self._direct = None

    def close(self) -> None:
        with self._lock:
            client, self._client = self._client, None
        with self._direct_lock:
            direct, self._direct = self._direct, None
        if direct is not None and self._direct_pid == os.getpid():
            direct.disconnect()
        if client is not None:
            client.close()
