"""What every benchmark job does: note that it ran, and when.

Each no-op job calls `record(t)`. It appends its start time (and, when `t` is an
enqueue timestamp, its enqueue-to-start latency) to a per-process buffer; a daemon
thread flushes the buffer every `FLUSH_S` seconds into Redis DB 15 with one pipelined
round trip: `INCRBY bench:done`, and packed float64 arrays appended to `bench:ts` and
`bench:lat`. The driver counts `bench:done` and reads the timestamps back, so every
row proves its jobs ran without adding a Redis round trip to each job.

The job body (`BENCH_BODY`, set by `peers.py --body`): `noop` records and returns;
`io` also makes one real Redis round trip (a `GET`), as real jobs do I/O: through a
synchronous redis-py client (shared by the process's threads) in plain functions, an
asyncio one in coroutines (`io()` / `aio()`, called by every adapter's job).
"""

from __future__ import annotations

import array
import os
import threading
import time
from collections import deque
from typing import Any

#: Seconds between flushes of a worker process's buffer to Redis.
FLUSH_S = 0.005

DONE_KEY = "bench:done"
TS_KEY = "bench:ts"
LAT_KEY = "bench:lat"

_starts: deque[float] = deque()
_lats: deque[float] = deque()
_pid = 0
_lock = threading.Lock()

#: `noop` or `io` (see the module docstring).
BODY = os.environ.get("BENCH_BODY", "noop")
IO_KEY = "bench:io"
_clients: dict[object, Any] = {}  # (pid, event loop or None) -> client


def redis_url() -> str:
    return os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/15")


def amqp_url() -> str:
    """The RabbitMQ of the peers that run on it (Celery, Dramatiq)."""
    return os.environ.get("BENCH_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/")


def purge_amqp(*queues: str) -> None:
    """Empty the benchmark's own RabbitMQ queues (those that exist) before a phase, as
    the driver flushes Redis DB 15: leftovers of a timed-out phase must not count."""
    import asyncio

    import aiormq

    async def purge() -> None:
        connection = await aiormq.connect(amqp_url())
        try:
            for queue in queues:
                channel = await connection.channel()
                try:
                    await channel.queue_purge(queue)
                except aiormq.exceptions.ChannelNotFoundEntity:
                    pass  # not declared yet: nothing to purge
        finally:
            await connection.close()

    asyncio.run(purge())


def record(t: float = 0.0) -> None:
    """Called by every benchmark job as its first and only statement."""
    now = time.time()
    if _pid != os.getpid():
        _start_flusher()
    _starts.append(now)
    if t:
        _lats.append(now - t)


def io() -> None:
    """The plain-function job body: one `GET` round trip when `BODY` is `io`."""
    if BODY != "io":
        return
    client = _clients.get((os.getpid(), None))
    if client is None:
        import redis

        client = _clients[(os.getpid(), None)] = redis.Redis.from_url(redis_url())
    client.get(IO_KEY)


async def aio() -> None:
    """The coroutine job body: one `GET` round trip on the running loop's client."""
    if BODY != "io":
        return
    import asyncio

    key = (os.getpid(), asyncio.get_running_loop())
    client = _clients.get(key)
    if client is None:
        import redis.asyncio

        client = _clients[key] = redis.asyncio.Redis.from_url(redis_url())
    await client.get(IO_KEY)


def _start_flusher() -> None:
    global _pid
    with _lock:
        if _pid == os.getpid():
            return
        _starts.clear()  # inherited from a parent across fork: not ours
        _lats.clear()
        _pid = os.getpid()
        threading.Thread(target=_flush_forever, name="bench-probe", daemon=True).start()


def _drain(buffer: deque[float]) -> bytes:
    items = array.array("d", (buffer.popleft() for _ in range(len(buffer))))
    return items.tobytes()


def _flush_forever() -> None:
    import redis

    client = redis.Redis.from_url(redis_url())
    while True:
        time.sleep(FLUSH_S)
        if not _starts:
            continue
        lats = _drain(_lats)
        starts = _drain(_starts)
        pipe = client.pipeline(transaction=False)
        if lats:
            pipe.rpush(LAT_KEY, lats)
        pipe.rpush(TS_KEY, starts)
        pipe.incrby(DONE_KEY, len(starts) // 8)
        pipe.execute()


def read_floats(client: object, key: str) -> list[float]:
    """All floats flushed under `key` (driver side)."""
    out = array.array("d")
    for blob in client.lrange(key, 0, -1):  # type: ignore[attr-defined]
        out.frombytes(blob)
    return list(out)
