"""RQ on Redis.

Workers: `rq worker -w rq.worker.SimpleWorker` (one process; RQ documents
SimpleWorker as the worker that runs jobs in the worker process instead of forking a
work horse per job, its fast mode) and, for two processes, `rq worker-pool -n 2
-w rq.worker.SimpleWorker`. Jobs are enqueued with `result_ttl=0` (results not
stored). Bulk: `Queue.enqueue_many([...])`, which writes through one pipeline.
"""

from __future__ import annotations

from datetime import timedelta

from redis import Redis
from rq import Queue

from adapters import _probe
from adapters.base import Adapter, tool


def noop(t: float) -> None:
    _probe.record(t)
    _probe.io()


class RQAdapter(Adapter):
    name = "RQ"
    config = (
        "`rq worker -w rq.worker.SimpleWorker --with-scheduler` (no fork per job); "
        "2 processes: `rq worker-pool -n 2 -w rq.worker.SimpleWorker`; result_ttl=0"
    )
    bulk_api = "`Queue.enqueue_many(...)` (one pipeline)"

    def __init__(self, redis_url: str, workdir: object) -> None:
        super().__init__(redis_url, workdir)  # type: ignore[arg-type]
        self.queue = Queue("default", connection=Redis.from_url(redis_url))

    def _one(self, t: float) -> None:
        self.queue.enqueue(noop, t, result_ttl=0)

    def _bulk(self, n: int) -> None:
        data = [Queue.prepare_data(noop, (0.0,), result_ttl=0) for _ in range(n)]
        self.queue.enqueue_many(data)

    def _delayed(self, n: int, delay_s: float) -> None:
        for _ in range(n):
            self.queue.enqueue_in(timedelta(seconds=delay_s), noop, 0.0, result_ttl=0)

    def workers(self, processes: int) -> list[list[str]]:
        common = ["-w", "rq.worker.SimpleWorker", "-u", self.redis_url, "-q"]
        if processes == 1:
            return [[tool("rq"), "worker", *common, "--with-scheduler", "default"]]
        return [[tool("rq"), "worker-pool", "-n", str(processes), *common, "default"]]
