"""Dramatiq on its Redis broker.

Workers: `dramatiq adapters.dramatiq -p K -t 8` (K processes of 8 threads, the
defaults Dramatiq documents; prefetch is its default of 2 per thread). The actor has
`max_retries=0`; no Results middleware (results are off by default).
Bulk: `group([...]).run()`, Dramatiq's documented way to send many messages (it
enqueues them one by one).
"""

from __future__ import annotations

from typing import Any

import dramatiq
from dramatiq.brokers.redis import RedisBroker

from adapters import _probe
from adapters.base import Adapter, tool

broker = RedisBroker(url=_probe.redis_url())
dramatiq.set_broker(broker)


@dramatiq.actor(max_retries=0, actor_name="noop")
def noop(t: float) -> None:
    _probe.record(t)
    _probe.io()


class DramatiqAdapter(Adapter):
    name = "Dramatiq"
    config = "`dramatiq -p K -t 8` (default threads and prefetch), max_retries=0"
    bulk_api = "`group([...]).run()`"
    #: The module `dramatiq` loads (its broker and actor), and that actor.
    module = "adapters.dramatiq"
    actor: Any = noop

    def _one(self, t: float) -> None:
        self.actor.send(t)

    def _bulk(self, n: int) -> None:
        messages = [self.actor.message(0.0) for _ in range(n)]
        dramatiq.group(messages, broker=self.actor.broker).run()

    def _delayed(self, n: int, delay_s: float) -> None:
        for _ in range(n):
            self.actor.send_with_options(args=(0.0,), delay=int(delay_s * 1000))

    def workers(self, processes: int) -> list[list[str]]:
        return [[tool("dramatiq"), self.module, "-p", str(processes), "-t", "8"]]
