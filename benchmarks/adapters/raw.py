"""The ceiling: a raw redis-py loop with the reliable-queue pattern, no framework.

Producer: `LPUSH` one JSON payload per call (one round trip), or one `LPUSH` of 1,000
payloads in bulk. Worker (`python -m adapters.raw`, one process each): `BLMOVE` from
the queue to a processing list, decode, run the no-op, `LREM` it from the processing
list: two round trips per job, synchronous client with hiredis. This is what one
Python process can move through Redis with the least work that still does not lose
a job when a worker dies.
"""

from __future__ import annotations

import json
import sys

import redis

from adapters import _probe
from adapters.base import Adapter, python

QUEUE = "raw:queue"
PROCESSING = "raw:processing"


class RawRedis(Adapter):
    name = "raw redis-py (ceiling)"
    config = "LPUSH; worker loop BLMOVE → LREM, 1 process each, sync redis-py + hiredis"
    bulk_api = "one `LPUSH` of 1,000 payloads"
    supports_delay = False

    def __init__(self, redis_url: str, workdir: object) -> None:
        super().__init__(redis_url, workdir)  # type: ignore[arg-type]
        self.client = redis.Redis.from_url(redis_url)

    def _one(self, t: float) -> None:
        self.client.lpush(QUEUE, json.dumps({"t": t}))

    def _bulk(self, n: int) -> None:
        self.client.lpush(QUEUE, *[json.dumps({"t": 0.0})] * n)

    def workers(self, processes: int) -> list[list[str]]:
        return [[python(), "-m", "adapters.raw"] for _ in range(processes)]

    def close(self) -> None:
        self.client.close()


def work() -> None:
    client = redis.Redis.from_url(_probe.redis_url())
    while True:
        payload = client.blmove(QUEUE, PROCESSING, 1, "RIGHT", "LEFT")
        if payload is None:
            continue
        _probe.record(json.loads(payload)["t"])
        _probe.io()
        client.lrem(PROCESSING, 1, payload)


if __name__ == "__main__":
    sys.exit(work())
