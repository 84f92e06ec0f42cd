"""Dramatiq on RabbitMQ (pika), its home broker.

Workers: `dramatiq adapters.dramatiq_rabbitmq -p K -t 8` (the documented defaults,
prefetch 2 per thread); `max_retries=0`, no Results middleware. The broker at
`BENCH_AMQP_URL`, the queue of the benchmark's own (`bench-dramatiq`) purged before
every phase (with its delay and dead-letter queues).
"""

from __future__ import annotations

from pathlib import Path

import dramatiq
from dramatiq.brokers.rabbitmq import RabbitmqBroker

from adapters import _probe
from adapters.base import Adapter, tool

QUEUE = "bench-dramatiq"

broker = RabbitmqBroker(url=_probe.amqp_url())
dramatiq.set_broker(broker)


@dramatiq.actor(max_retries=0, actor_name="noop", queue_name=QUEUE)
def noop(t: float) -> None:
    _probe.record(t)


class DramatiqRabbitAdapter(Adapter):
    name = "Dramatiq (RabbitMQ)"
    config = "`dramatiq -p K -t 8` on RabbitMQ (pika; default threads and prefetch), max_retries=0"
    bulk_api = "`group([...]).run()`"
    queues_in_redis = False

    def __init__(self, redis_url: str, workdir: Path) -> None:
        super().__init__(redis_url, workdir)
        _probe.purge_amqp(QUEUE, f"{QUEUE}.DQ", f"{QUEUE}.XQ")

    def _one(self, t: float) -> None:
        noop.send(t)

    def _bulk(self, n: int) -> None:
        dramatiq.group([noop.message(0.0) for _ in range(n)]).run()

    def _delayed(self, n: int, delay_s: float) -> None:
        for _ in range(n):
            noop.send_with_options(args=(0.0,), delay=int(delay_s * 1000))

    def workers(self, processes: int) -> list[list[str]]:
        return [[tool("dramatiq"), "adapters.dramatiq_rabbitmq", "-p", str(processes), "-t", "8"]]
