"""The Prometheus metrics of a real worker on every broker, read from its registry;
the broker-wide gauges of `offload metrics`' collector. (The end-to-end proof with a
real Prometheus server is test_prometheus.py.)"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from offload import Backoff, Offload, Worker, current_job
from offload.hooks import Hook, Run
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


async def test_a_job_buried_by_its_failing_limit_key_is_counted_logged_and_heard(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A job whose `rate_key` raised was buried by the worker before it ran (in the
    dead-letter queue, `InvalidLimitKey`) with no `offload_jobs_finished_total`
    {outcome="dead"}, no `offload.jobs` line and no `on_dead`: `offload status`
    counted a dead job that metrics, logs and Sentry never saw."""
    app = Offload(f"sqlite:///{tmp_path / 'broker.db'}")
    metrics = Metrics(app)
    app.add_hook(metrics)
    dead: list[str] = []

    class OnDead(Hook):
        def on_dead(self, run: Run) -> None:
            dead.append(run.job_id)

    app.add_hook(OnDead())

    @app.task(name="keyed", rate_limit="10/s", rate_key=lambda tenant: tenant["id"])
    def keyed(tenant: dict[str, str]) -> None: ...

    caplog.set_level(logging.INFO, logger="offload.jobs")
    try:
        job = await keyed.enqueue_async({})  # no "id": the key function raises
        await run_worker_until(app, lambda: all_ended(app, [job.id]))
        info = await job.info_async()
        assert info is not None and info.error is not None
        assert info.error.type == "InvalidLimitKey"
        finished = "offload_jobs_finished_total"
        assert _value(metrics, finished, queue="default", task="keyed", outcome="dead") == 1
        assert dead == [job.id]
        [line] = [r for r in caplog.records if r.name == "offload.jobs"]
        assert line.levelname == "ERROR" and "InvalidLimitKey" in line.getMessage()
        assert line.task == "keyed"  # type: ignore[attr-defined]
    finally:
        await app.aclose()


async def test_jobs_that_end_in_the_broker_are_counted_once_by_two_workers(url: str) -> None:
    # Given two workers (of two apps, each with its metrics, where the broker can be
    # shared; memory://: of one app) that take the default queue, and jobs of another
    # queue that expire, or are cancelled, while they wait there,
    apps = [Offload(url)] if url == "memory://" else [Offload(url), Offload(url)]
    metrics = [Metrics(app) for app in apps]
    for app, hook in zip(apps, metrics, strict=True):
        app.add_hook(hook)
        app.task(name="later", queue="idle")(lambda: None)
        app.task(name="ok")(lambda: None)
    producer = apps[0]
    later = producer.tasks["later"]
    workers = [
        Worker(apps[i % len(apps)], queues=["default"], poll_s=0.05, sweep_s=0.2) for i in range(2)
    ]
    try:
        expiring = [await later.options(expires=0.3).enqueue_async() for _ in range(30)]
        cancelled = [await later.enqueue_async() for _ in range(12)]
        ran = await producer.tasks["ok"].enqueue_async()
        for job in cancelled:
            assert await job.cancel_async()

        # when both workers run (each sweeps, expiring them, and drains the outbox),
        running = [asyncio.create_task(w.run()) for w in workers]
        broker = await producer.connected_broker()
        ids = [j.id for j in [*expiring, *cancelled, ran]]
        deadline = time.monotonic() + 30
        while not (await all_ended(producer, ids) and await broker.outbox() == []):
            assert time.monotonic() < deadline, "timed out waiting for the ends"
            await asyncio.sleep(0.05)
        for worker in workers:
            worker.stop()
        await asyncio.gather(*running)

        # then each end is counted once, with its outcome.
        def total(outcome: str) -> float:
            labels = {"queue": "idle", "task": "later", "outcome": outcome}
            return sum(_value(m, "offload_jobs_finished_total", **labels) for m in metrics)

        assert (total("expired"), total("cancelled")) == (30, 12)
        ok = {"queue": "default", "task": "ok", "outcome": "succeeded"}
        assert sum(_value(m, "offload_jobs_finished_total", **ok) for m in metrics) == 1
    finally:
        for app in apps:
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
