"""Celery 5 on RabbitMQ (py-amqp), its home broker.

The same settings and pool as `adapters.celery` (Celery's "Optimizing" guide: prefetch
multiplier 128, no result backend, acks on receipt, no gossip/mingle/heartbeat), with
the broker at `BENCH_AMQP_URL` and a queue of the benchmark's own (`bench-celery`),
purged before every phase.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from adapters import _probe
from adapters.celery import POOL, CeleryAdapter, make_app

QUEUE = "bench-celery"

app, noop = make_app(_probe.amqp_url(), task_default_queue=QUEUE)


class CeleryRabbitAdapter(CeleryAdapter):
    name = "Celery (RabbitMQ)"
    config = (
        f"`celery worker -P {POOL} -c 100` on RabbitMQ (py-amqp), prefetch multiplier 128, "
        "no result backend, acks on receipt, without gossip/mingle/heartbeat"
    )
    module = "adapters.celery_rabbitmq"
    queue = QUEUE
    task: Any = noop
    queues_in_redis = False

    def __init__(self, redis_url: str, workdir: Path) -> None:
        super().__init__(redis_url, workdir)
        _probe.purge_amqp(QUEUE)
