"""Celery 5 on its Redis transport.

Settings from Celery's "Optimizing" guide for many short tasks: a large
`worker_prefetch_multiplier` (128), no result backend (`task_ignore_result`), acks on
receipt (the default, `task_acks_late=False`), rate limits disabled, and the worker
started `--without-gossip --without-mingle --without-heartbeat`. Pool: see `POOL`.
One worker process = one `celery worker` node with that pool; two = two nodes.
Bulk: `group(...).apply_async()`, Celery's documented way to send many tasks (it
publishes them one by one over one connection).
"""

from __future__ import annotations

import os
from typing import Any

from celery import Celery, group

from adapters import _probe
from adapters.base import Adapter, tool

#: `gevent` with 100 greenlets: the pool Celery documents for I/O-bound work, and in
#: our runs faster than `solo`, `threads` and `prefork` for no-op tasks.
POOL = os.environ.get("BENCH_CELERY_POOL", "gevent")


def make_app(broker_url: str, **conf: Any) -> tuple[Celery, Any]:
    """A Celery app on `broker_url` with the settings above, and its `noop` task."""
    app = Celery("bench", broker=broker_url)
    app.conf.update(
        task_ignore_result=True,
        worker_prefetch_multiplier=128,
        worker_disable_rate_limits=True,
        task_acks_late=False,
        broker_connection_retry_on_startup=True,
        worker_hijack_root_logger=False,
        **conf,
    )

    @app.task(name="noop")
    def noop(t: float) -> None:
        _probe.record(t)
        _probe.io()

    return app, noop


app, noop = make_app(_probe.redis_url())


class CeleryAdapter(Adapter):
    name = "Celery"
    config = (
        f"`celery worker -P {POOL} -c 100`, prefetch multiplier 128, no result backend, "
        "acks on receipt, without gossip/mingle/heartbeat; 2 processes = 2 nodes"
    )
    bulk_api = "`group(...).apply_async()`"
    pool = POOL
    #: The module `celery -A` loads, and the queue its workers take (None: the default).
    module = "adapters.celery"
    queue: str | None = None
    task: Any = noop

    def _one(self, t: float) -> None:
        self.task.delay(t)

    def _bulk(self, n: int) -> None:
        group(self.task.s(0.0) for _ in range(n)).apply_async()

    def _delayed(self, n: int, delay_s: float) -> None:
        for _ in range(n):
            self.task.apply_async((0.0,), countdown=delay_s)

    def workers(self, processes: int) -> list[list[str]]:
        concurrency = {"solo": "1", "threads": "8"}.get(self.pool, "100")
        queue = ["-Q", self.queue] if self.queue else []
        return [
            [tool("celery"), "-A", self.module, "worker", "-P", self.pool, "-c", concurrency,
             "-n", f"bench{i}@%h", *queue, "--without-gossip", "--without-mingle",
             "--without-heartbeat", "-l", "WARNING"]
            for i in range(processes)
        ]  # fmt: skip


class CeleryThreads(CeleryAdapter):
    """The thread pool with 8 threads: the comparison for plain-function handlers at
    the same thread count as Huey's `-w 8`, Dramatiq's `-t 8` and offload's `def` row."""

    name = "Celery, threads"
    config = "`celery worker -P threads -c 8`, otherwise as Celery"
    pool = "threads"
