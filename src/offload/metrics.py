"""Prometheus metrics (`pip install 'offload[metrics]'`), built on the hooks.

Two sources, so that nothing is counted twice:

- Each producer and worker counts what it did (`Metrics`, a hook): jobs enqueued,
  attempts finished by outcome, run time, wait before the start, broker errors.
  `offload worker --metrics-port P` serves them. With `--processes N` the workers
  write to prometheus-client's multiprocess files in a directory the supervisor owns,
  and the supervisor serves their sum on the one port (`serve_children`); counts of a
  worker process that ended (recycled, crashed) stay in the sum.
- What the broker holds (jobs per queue and state, the oldest ready job's age, live
  workers) is read from the broker by one process, `offload metrics` (`BrokerCollector`),
  at each scrape, so N workers do not report the same queue N times.

Labels stay bounded: `queue` is a queue name, `task` a task registered in the app
(any other name, from a bad message or a producer-only task, is counted as "other"),
`outcome` and `state` are fixed words.

Counted by the worker, in `offload_jobs_finished_total`: each attempt that ended
`succeeded`, `retried`, `dead` or `cancelled` (a running job cancelled), and each job
that ended inside the broker without running: `expired`, or `cancelled` while waiting.
Those ends are recorded by the broker in its outbox, which every worker drains; the
worker whose `clear_outbox` removed an entry counts it (`on_ended`), so each is counted
once across the fleet, provided the workers run with metrics.
"""

from __future__ import annotations

import logging
import os
import tempfile
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry, Counter, Histogram, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from offload.envelope import Envelope, JobState
from offload.errors import ConfigurationError
from offload.hooks import Hook, Run

if TYPE_CHECKING:
    from offload.app import Offload
    from offload.brokers.base import QueueStats

__all__ = [
    "MULTIPROC_ENV",
    "BrokerCollector",
    "Metrics",
    "multiprocess_dir",
    "serve",
    "serve_children",
]

logger = logging.getLogger("offload.metrics")

#: prometheus-client's multiprocess directory, read when it is first imported.
MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"

#: Seconds; a job runs from milliseconds (an email) to many minutes (a report).
DURATION_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 1800)
OTHER_TASK = "other"


class Metrics(Hook):
    """Counts an app's enqueues and its worker's attempts (register with
    `app.add_hook(Metrics(app))`, as `offload worker --metrics-port` does).

    Args:
        app: the app whose registered tasks are the `task` label's values.
        registry: where the metrics are registered (default: a registry of their own,
            `self.registry`, so that several apps in one process do not collide).
    """

    def __init__(self, app: Offload, registry: CollectorRegistry | None = None) -> None:
        self._tasks = app.tasks
        self.registry = registry if registry is not None else CollectorRegistry()
        r = self.registry
        self.enqueued = Counter(
            "offload_jobs_enqueued", "Jobs enqueued (a duplicate key is not counted).",
            ["queue", "task"], registry=r,
        )  # fmt: skip
        self.finished = Counter(
            "offload_jobs_finished", "Attempts finished, and jobs that ended without one "
            "(expired, cancelled while waiting), by outcome.",
            ["queue", "task", "outcome"], registry=r,
        )  # fmt: skip
        self.duration = Histogram(
            "offload_job_duration_seconds", "Run time of an attempt (the handler).",
            ["queue", "task"], buckets=DURATION_BUCKETS, registry=r,
        )  # fmt: skip
        self.wait = Histogram(
            "offload_job_wait_seconds", "From a job's due time (enqueue or delay end) to "
            "its first attempt's start.", ["queue"], buckets=DURATION_BUCKETS, registry=r,
        )  # fmt: skip
        self.broker_errors = Counter(
            "offload_broker_errors", "Broker calls of a worker that failed (then retried).",
            registry=r,
        )  # fmt: skip

        # Labelled children by their labels: `labels()` costs a lock and a lookup.
        self._children: dict[tuple[str, ...], Any] = {}

    def _task(self, name: str) -> str:
        return name if name in self._tasks else OTHER_TASK

    def _child(self, metric: Counter | Histogram, *labels: str) -> Any:
        key = (str(id(metric)), *labels)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = metric.labels(*labels)
        return child

    def after_enqueue(
        self, envelope: Envelope, created: bool | None, error: BaseException | None
    ) -> None:
        if created:
            self._child(self.enqueued, envelope.queue, self._task(envelope.task)).inc()

    def before_run(self, run: Run) -> None:
        if run.wait_s is not None:
            self._child(self.wait, run.queue).observe(run.wait_s)

    def after_run(self, run: Run) -> None:
        if run.outcome is None:  # not recorded: the attempt will be seen again
            return
        task = self._task(run.task)
        self._child(self.finished, run.queue, task, run.outcome).inc()
        self._child(self.duration, run.queue, task).observe(run.duration_s)

    def on_ended(self, job_id: str, state: JobState, envelope: Envelope | None) -> None:
        queue, task = ("?", OTHER_TASK) if envelope is None else (envelope.queue, envelope.task)
        self._child(self.finished, queue, self._task(task), state.value).inc()

    def on_broker_error(self, what: str, error: BaseException) -> None:
        self.broker_errors.inc()


class BrokerCollector(Collector):
    """The broker-wide gauges, read from the broker at each scrape (`offload metrics`).

    A scrape that cannot reach the broker returns only `offload_broker_errors_total`
    (counting such scrapes), so the gauges go missing rather than lie.

    `queues` limits the gauges to those queues, and names the ones a broker cannot
    list (RabbitMQ without a state store knows only the queues its process used). A
    broker that keeps no worker registry (a delivery without a state store) is not an
    error: the counts its queue server gives are served, and what it cannot know is
    left out rather than reported as 0 (`offload_workers`, the states it does not
    count, the oldest job's age), as `offload status` says "workers: not known".
    """

    def __init__(
        self, app: Offload, *, timeout_s: float = 10.0, queues: Sequence[str] = ()
    ) -> None:
        self.app = app
        self.timeout_s = timeout_s
        self.queues = list(queues)
        self.errors = 0

    def collect(self) -> Iterator[CounterMetricFamily | GaugeMetricFamily]:
        try:
            stats, workers = self.app.portal.run(self._read())
        except Exception as exc:
            self.errors += 1
            logger.warning("could not read the broker for metrics: %s", exc)
            stats, workers = None, None
        errors = CounterMetricFamily(
            "offload_broker_errors", "Scrapes that could not read the broker."
        )
        errors.add_metric([], self.errors)
        yield errors
        if stats is None:
            return
        jobs = GaugeMetricFamily(
            "offload_queue_jobs", "Jobs the broker holds, by queue and state.",
            labels=["queue", "state"],
        )  # fmt: skip
        oldest = GaugeMetricFamily(
            "offload_queue_oldest_age_seconds",
            "How long the longest-waiting ready job of a queue has waited (0: none).",
            labels=["queue"],
        )
        now = self.app.clock.now()
        alone = workers is None  # a delivery without a state store: partial counts
        for queue, queue_stats in sorted(stats.items()):
            for state in JobState:
                if not alone or state in queue_stats.states:
                    jobs.add_metric([queue, state.value], queue_stats.states.get(state, 0))
            since = queue_stats.oldest_queued_at
            if not alone or since is not None:
                oldest.add_metric([queue], max(now - since, 0.0) if since is not None else 0.0)
        yield jobs
        yield oldest
        if workers is None:  # no registry to count
            return
        alive = GaugeMetricFamily("offload_workers", "Workers alive (registered heartbeats).")
        alive.add_metric([], workers)
        yield alive

    async def _read(self) -> tuple[dict[str, QueueStats], int | None]:
        """The counts, and the live workers (None: the broker keeps no registry)."""
        import asyncio

        async def read() -> tuple[dict[str, QueueStats], int | None]:
            broker = await self.app.connected_broker()
            stats = dict(await broker.counts(self.queues or None))
            try:
                return stats, len(await broker.workers())
            except ConfigurationError:  # a delivery without a state store
                return stats, None

        return await asyncio.wait_for(read(), self.timeout_s)


def serve(port: int, registry: CollectorRegistry, *, addr: str = "0.0.0.0") -> None:
    """Serve `registry` on `http://addr:port/metrics` from a daemon thread.

    Raises:
        ConfigurationError: the port cannot be listened on (taken, not allowed).
    """
    try:
        start_http_server(port, addr=addr, registry=registry)
    except OSError as exc:
        raise ConfigurationError(
            f"cannot serve metrics on {addr}:{port}: {exc.strerror or exc}"
        ) from None


def multiprocess_dir() -> str:
    """A fresh directory for the worker processes' metric files (the supervisor's)."""
    return tempfile.mkdtemp(prefix="offload-metrics-")


def serve_children(port: int, path: str, *, addr: str = "0.0.0.0") -> None:
    """Serve the sum of the metrics that worker processes write under `path` (they
    run with `PROMETHEUS_MULTIPROC_DIR=path`)."""
    from prometheus_client import multiprocess

    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry, path=path)  # type: ignore[no-untyped-call]
    serve(port, registry, addr=addr)


def child_exited(path: str, pid: int) -> None:
    """Forget a dead worker process's live gauges (its counters stay in the sum)."""
    from prometheus_client import multiprocess

    if os.path.isdir(path):
        multiprocess.mark_process_dead(pid, path)  # type: ignore[no-untyped-call]
