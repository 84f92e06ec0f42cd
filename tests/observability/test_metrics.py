"""The Prometheus metrics of a real worker on every broker, read from its registry;
the broker-wide gauges of `offload metrics`' collector. (The end-to-end proof with a
real Prometheus server is test_prometheus.py.)"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import pytest

from offload import Backoff, Offload, current_job
from offload.metrics import BrokerCollector, Metrics
from tests.conftest import BROKER_NAMES
from tests.observability.helpers import all_ended, run_worker_until

QUICK = Backoff(base_s=0.01, cap_s=0.01, jitter=False)


@pytest.fixture(params=BROKER_NAMES)
def url(request: pytest.FixtureRequest, broker_url: Callable[[str], str]) -> str:
    return broker_url(request.param)


def _value(metrics: Metrics, name: str, **labels: str) -> float:
    value = metrics.registry.get_sample_value(name, labels)
    return 0.0 if value is None else value


async def test_worker_metrics_count_each_outcome_once(url: str) -> None:
    app = Offload(url)
    metrics = Metrics(app)
    app.add_hook(metrics)

    @app.task(name="ok")
    def ok() -> None: ...

    @app.task(name="flaky", backoff=QUICK)
    def flaky() -> None:
        if current_job().attempt == 1:
            raise ConnectionError("down")

    @app.task(name="doomed", give_up_on=(ValueError,))
    def doomed() -> None:
        raise ValueError("no")

    try:
        jobs = [await ok.enqueue_async() for _ in range(5)]
        jobs += [await flaky.enqueue_async() for _ in range(2)]
        jobs.append(await doomed.enqueue_async())
        jobs.append(await ok.options(key="same").enqueue_async())
        await ok.options(key="same").enqueue_async()  # a duplicate: not a new job
        await app.options("not.registered.here", queue="elsewhere").enqueue_async()
        await run_worker_until(app, lambda: all_ended(app, [j.id for j in jobs]))

        enqueued = "offload_jobs_enqueued_total"
        assert _value(metrics, enqueued, queue="default", task="ok") == 6
        assert _value(metrics, enqueued, queue="default", task="flaky") == 2
        assert _value(metrics, enqueued, queue="elsewhere", task="other") == 1  # bounded
        finished = "offload_jobs_finished_total"
        assert _value(metrics, finished, queue="default", task="ok", outcome="succeeded") == 6
        assert _value(metrics, finished, queue="default", task="flaky", outcome="retried") == 2
        assert _value(metrics, finished, queue="default", task="flaky", outcome="succeeded") == 2
        assert _value(metrics, finished, queue="default", task="doomed", outcome="dead") == 1
        duration = "offload_job_duration_seconds_count"
        assert _value(metrics, duration, queue="default", task="flaky") == 4  # per attempt
        assert _value(metrics, "offload_job_wait_seconds_count", queue="default") == 9
    finally:
        await app.aclose()


@pytest.fixture(params=[b for b in BROKER_NAMES if b != "memory"])
def shared_url(request: pytest.FixtureRequest, broker_url: Callable[[str], str]) -> str:
    """A broker another app (the exporter's) can reach: not memory://."""
    return broker_url(request.param)


async def test_the_collector_reports_queue_depth_age_and_workers(shared_url: str) -> None:
    url = shared_url
    app = Offload(url)

    @app.task(name="later")
    def later() -> None: ...

    try:
        for _ in range(3):
            await later.enqueue_async()
        await later.options(delay=3600).enqueue_async()
        families = {f.name: f for f in await _collect(url)}
        depth = {
            (s.labels["queue"], s.labels["state"]): s.value
            for s in families["offload_queue_jobs"].samples
        }
        assert depth[("default", "queued")] == 3
        assert depth[("default", "scheduled")] == 1
        assert depth[("default", "dead")] == 0
        [age] = families["offload_queue_oldest_age_seconds"].samples
        assert 0 <= age.value < 60
        [workers] = families["offload_workers"].samples
        assert workers.value == 0
    finally:
        await app.aclose()


async def _collect(url: str) -> list[Any]:
    """One scrape of `offload metrics`' collector, from a thread as in its HTTP server
    (it reaches the broker through its own app's portal loop)."""

    def scrape() -> list[Any]:
        reader = Offload(url)
        try:
            return list(BrokerCollector(reader).collect())
        finally:
            reader.close()

    return await asyncio.to_thread(scrape)
