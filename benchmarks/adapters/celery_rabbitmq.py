"""Celery 5 on RabbitMQ (py-amqp), its home broker.

The same settings as `adapters.celery` (Celery's "Optimizing" guide: prefetch
multiplier 128, no result backend, acks on receipt, no gossip/mingle/heartbeat, the
gevent pool with 100 greenlets), with the broker at `BENCH_AMQP_URL` and a queue of
the benchmark's own (`bench-celery`), purged before every phase.
"""

from __future__ import annotations

from pathlib import Path

from celery import Celery, group

from adapters import _probe
from adapters.base import Adapter, tool
from adapters.celery import POOL

QUEUE = "bench-celery"

app = Celery("bench", broker=_probe.amqp_url())
app.conf.update(
    task_ignore_result=True,
    worker_prefetch_multiplier=128,
    worker_disable_rate_limits=True,
    task_acks_late=False,
    task_default_queue=QUEUE,
    broker_connection_retry_on_startup=True,
    worker_hijack_root_logger=False,
)


@app.task(name="noop")
def noop(t: float) -> None:
    _probe.record(t)


class CeleryRabbitAdapter(Adapter):
    name = "Celery (RabbitMQ)"
    config = (
        f"`celery worker -P {POOL} -c 100` on RabbitMQ (py-amqp), prefetch multiplier 128, "
        "no result backend, acks on receipt, without gossip/mingle/heartbeat"
    )
    bulk_api = "`group(...).apply_async()`"
    queues_in_redis = False

    def __init__(self, redis_url: str, workdir: Path) -> None:
        super().__init__(redis_url, workdir)
        _probe.purge_amqp(QUEUE)

    def _one(self, t: float) -> None:
        noop.delay(t)

    def _bulk(self, n: int) -> None:
        group(noop.s(0.0) for _ in range(n)).apply_async()

    def _delayed(self, n: int, delay_s: float) -> None:
        for _ in range(n):
            noop.apply_async((0.0,), countdown=delay_s)

    def workers(self, processes: int) -> list[list[str]]:
        concurrency = "1" if POOL == "solo" else "100"
        return [
            [tool("celery"), "-A", "adapters.celery_rabbitmq", "worker", "-P", POOL,
             "-c", concurrency, "-n", f"bench{i}@%h", "-Q", QUEUE, "--without-gossip",
             "--without-mingle", "--without-heartbeat", "-l", "WARNING"]
            for i in range(processes)
        ]  # fmt: skip
