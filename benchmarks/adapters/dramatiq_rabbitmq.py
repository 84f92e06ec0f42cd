"""Dramatiq on RabbitMQ (pika), its home broker.

Workers: `dramatiq adapters.dramatiq_rabbitmq -p K -t 8` (the documented defaults,
prefetch 2 per thread); `max_retries=0`, no Results middleware. The broker at
`BENCH_AMQP_URL`, the queue of the benchmark's own (`bench-dramatiq`) purged before
every phase (with its delay and dead-letter queues). The adapter is Dramatiq's on Redis
with this module's actor; importing that module declares its actor on a Redis broker,
but this one sets the global broker after it, so the worker consumes from RabbitMQ.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import dramatiq
from dramatiq.brokers.rabbitmq import RabbitmqBroker

from adapters import _probe
from adapters.dramatiq import DramatiqAdapter

QUEUE = "bench-dramatiq"

broker = RabbitmqBroker(url=_probe.amqp_url())
dramatiq.set_broker(broker)


@dramatiq.actor(max_retries=0, actor_name="noop", queue_name=QUEUE)
def noop(t: float) -> None:
    _probe.record(t)
    _probe.io()


class DramatiqRabbitAdapter(DramatiqAdapter):
    name = "Dramatiq (RabbitMQ)"
    config = "`dramatiq -p K -t 8` on RabbitMQ (pika; default threads and prefetch), max_retries=0"
    module = "adapters.dramatiq_rabbitmq"
    actor: Any = noop
    queues_in_redis = False

    def __init__(self, redis_url: str, workdir: Path) -> None:
        super().__init__(redis_url, workdir)
        _probe.purge_amqp(QUEUE, f"{QUEUE}.DQ", f"{QUEUE}.XQ")
