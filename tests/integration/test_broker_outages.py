"""`offload worker` as a real subprocess while its broker goes away: PostgreSQL backends
terminated under it (a failover, a pgbouncer restart, an idle timeout), and a Redis
server of the test's own killed and started again. The worker stays up, every job
finishes once, and the log says so in a few lines, not one per loop per second.

Only the test's own server and the worker's own backends (selected by an
`application_name` unique to the test) are ever touched.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import os
import subprocess
import sys
import textwrap
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path

import pytest

from offload import JobState, Offload, Worker
from offload.brokers import from_url
from offload.brokers.base import Broker
from offload.errors import BrokerUnavailable
from tests.conformance.helpers import enqueue_one
from tests.redis_cluster import RedisProcess

APP_SOURCE = textwrap.dedent(
    """
    import os, pathlib, time
    from offload import Offload, current_job

    app = Offload()
    OUT = pathlib.Path(os.environ["JOBS_OUT"])

    @app.task(name="work")
    def work(tag: str, seconds: float) -> str:
        (OUT / f"{tag}.{current_job().attempt}.started").touch()
        time.sleep(seconds)
        return tag
    """
)


class WorkerProcess:
    """One `offload worker` subprocess of the app above, its log in a file."""

    def __init__(self, tmp_path: Path, url: str, *args: str) -> None:
        self.out = tmp_path / "out"
        self.out.mkdir(exist_ok=True)
        (tmp_path / "jobsapp.py").write_text(APP_SOURCE)
        self.log = tmp_path / "worker.log"
        env = {**os.environ, "OFFLOAD_URL": url, "JOBS_OUT": str(self.out)}
        env["PYTHONPATH"] = str(tmp_path)
        with self.log.open("wb") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "offload", "worker", "jobsapp:app", *args],
                env=env,
                cwd=tmp_path,
                stdout=log,
                stderr=subprocess.STDOUT,
            )

    def alive(self) -> bool:
        return self.proc.poll() is None

    def text(self) -> str:
        return self.log.read_text(errors="replace")

    def runs(self) -> dict[str, int]:
        """How many times each job tag started."""
        counts: dict[str, int] = {}
        for path in self.out.glob("*.started"):
            tag = path.name.split(".")[0]
            counts[tag] = counts.get(tag, 0) + 1
        return counts

    def stop(self) -> None:
        if self.alive():
            self.proc.terminate()
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def wait_for(condition: Callable[[], bool], what: str, timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def succeeded(url: str, queue: str = "default") -> int:
    """How many jobs of `queue` succeeded, read on a broker of its own, closed after
    (so that no connection of this process outlives a server restart)."""

    async def count() -> int:
        async with from_url(url) as broker:
            return (await broker.counts([queue]))[queue].states[JobState.SUCCEEDED]

    return asyncio.run(count())


# -- PostgreSQL -------------------------------------------------------------------------


def _batch_done(url: str, total: int, worker: WorkerProcess) -> bool:
    return succeeded(url) == total or not worker.alive()


def terminate_backends(dsn: str, application_name: str, last_query: str = "") -> int:
    """Terminate the server processes of the connections named `application_name`
    (the worker's own, never anyone else's) whose last statement contains
    `last_query`; returns how many."""
    import psycopg

    with psycopg.connect(dsn, autocommit=True) as conn:
        rows = conn.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
            " WHERE application_name = %s AND pid <> pg_backend_pid()"
            " AND strpos(query, %s) > 0",
            (application_name, last_query),
        ).fetchall()
    return len(rows)


def test_postgres_worker_survives_its_backends_being_terminated_again_and_again(
    tmp_path: Path, postgres_dsn: str, postgres_url: str
) -> None:
    name = f"offload-test-{uuid.uuid4().hex[:12]}"
    app = Offload(postgres_url)  # the test's own connections keep the default name
    url = f"{postgres_url}&application_name={name}"
    worker = WorkerProcess(tmp_path, url, "-c", "4", "--poll", "0.05")
    try:
        total, terminated = 0, 0
        for round_ in range(6):
            batch = [(f"r{round_}j{i}", 0.01) for i in range(40)]
            app.options("work").enqueue_many(batch)
            total += len(batch)
            time.sleep(0.2)
            terminated += terminate_backends(postgres_dsn, name)  # while it runs jobs
            wait_for(functools.partial(_batch_done, postgres_url, total, worker), "batch")
            assert worker.alive(), worker.text()
            # While it waits idle: the pooled connections take turns, so ending the
            # one that last reserved, or the one that last asked for the next due
            # job, soon fails a call of the idle wait rather than the reserve.
            for last_query in ("offload_reserve", "due_at") * 4:
                time.sleep(0.15)
                terminated += terminate_backends(postgres_dsn, name, last_query)
            time.sleep(0.2)
            assert worker.alive(), worker.text()
        assert terminated >= 6, "no backend was terminated: the test proved nothing"
        assert succeeded(postgres_url) == total
        assert "Traceback" not in worker.text()
        # offload says a cut connection once; psycopg_pool's own warnings about the
        # broken connections it then discards (three per cut) are not repeated
        assert "psycopg.pool" not in worker.text(), worker.text()
    finally:
        worker.stop()
        app.close()


# -- Redis ------------------------------------------------------------------------------


@pytest.fixture
def own_redis(tmp_path: Path, redis_server: str) -> Iterator[RedisProcess]:
    """A redis-server of this test's own, with an fsync-always AOF so that a kill loses
    no acknowledged write, which the test kills and starts again."""
    directory = tmp_path / "redis"
    directory.mkdir()
    server = RedisProcess(directory, None, "--appendonly", "yes", "--appendfsync", "always")
    server.start()
    try:
        yield server
    finally:
        server.stop()


def outage_lines(log: str) -> list[str]:
    words = ("unavailable", "reachable again", "failed", "lease lost", "Traceback", "Error")
    return [line for line in log.splitlines() if any(w in line for w in words)]


def test_redis_outage_is_one_warning_and_one_reconnected_line_and_no_job_runs_twice(
    tmp_path: Path, own_redis: RedisProcess
) -> None:
    url = f"redis://127.0.0.1:{own_redis.port}"
    worker = WorkerProcess(tmp_path, url, "-c", "4", "--lease", "30")
    try:
        jobs = [(f"j{i}", 0.3) for i in range(40)]
        producer = Offload(url)  # closed before the kill: no stale sockets in this process
        producer.options("work").enqueue_many(jobs)
        producer.close()
        wait_for(lambda: len(worker.runs()) >= 8, "the first jobs")
        own_redis.stop()
        time.sleep(4)  # jobs finish meanwhile, and every loop of the worker fails
        assert worker.alive(), worker.text()
        own_redis.start()
        wait_for(lambda: succeeded(url) == len(jobs), "every job", timeout_s=90)
        assert worker.alive(), worker.text()
        runs = worker.runs()
        assert set(runs) == {tag for tag, _ in jobs}
        assert [tag for tag, n in runs.items() if n > 1] == [], "a job ran twice"
        lines = outage_lines(worker.text())
        assert "Traceback" not in worker.text(), worker.text()
        assert len([line for line in lines if "unavailable" in line]) == 1, lines
        assert len([line for line in lines if "reachable again" in line]) == 1, lines
        assert len(lines) <= 4, lines
    finally:
        worker.stop()


# -- push wake-ups come back -------------------------------------------------------------


async def woken_within(waiter: Broker, producer: Broker, timeout_s: float = 10.0) -> float:
    """Seconds from an enqueue by `producer` to the end of `waiter.wait` (which gives
    up after `timeout_s`). Then the waiter reserves what is ready, as a worker does
    after a wake-up (on Redis only the first job since the queue's last reservation
    wakes it)."""
    waiting = asyncio.create_task(waiter.wait(["default"], timeout_s))
    await asyncio.sleep(0.05)
    start = time.monotonic()
    await enqueue_one(producer)
    await waiting
    took = time.monotonic() - start
    await waiter.reserve(["default"], worker_id="waiter", lease_s=60, limit=100)
    return took


async def settled_wakeup(waiter: Broker, producer: Broker) -> float:
    """The wake-up latency once the listener had time to come back (a wait right after
    the loss may be woken at once, spuriously, by the reconnection itself). Well under
    the wait's 10 s if a push woke it, however loaded the machine."""
    await asyncio.sleep(1.0)
    await waiter.wait(["default"], 0.5)
    # a worker's next turn reserves first: what was enqueued while it listened to
    # nothing (its wake-up lost) is taken, and the next enqueue wakes it again
    await waiter.reserve(["default"], worker_id="waiter", lease_s=60, limit=100)
    return await woken_within(waiter, producer)


async def test_postgres_listener_comes_back_after_its_backend_is_terminated(
    postgres_dsn: str, postgres_url: str
) -> None:
    name = f"offload-test-{uuid.uuid4().hex[:12]}"
    waiter, producer = from_url(f"{postgres_url}&application_name={name}"), from_url(postgres_url)
    async with waiter, producer:
        assert await woken_within(waiter, producer) < 3.0
        assert terminate_backends(postgres_dsn, name, "LISTEN") >= 1
        assert await settled_wakeup(waiter, producer) < 3.0


async def test_redis_wakeups_come_back_after_redis_restarts(own_redis: RedisProcess) -> None:
    url = f"redis://127.0.0.1:{own_redis.port}"
    waiter, producer = from_url(url), from_url(url)
    async with waiter, producer:
        assert await woken_within(waiter, producer) < 3.0
        own_redis.stop()
        await waiter.wait(["default"], 0.2)  # returns: there is nothing to listen to
        own_redis.start()
        await enqueue_one(producer)  # the producer's stale connection is retried once
        assert await settled_wakeup(waiter, producer) < 3.0


async def test_worker_on_redis_cluster_comes_back_after_every_node_restarts(
    tmp_path: Path, redis_server: str, caplog: pytest.LogCaptureFixture
) -> None:
    from tests.redis_cluster import start_cluster

    with start_cluster(tmp_path, masters=3) as cluster:
        app = Offload(f"redis://127.0.0.1:{cluster.ports[0]}?cluster=true")
        done: list[int] = []

        @app.task(name="record")
        async def record(n: int) -> None:
            done.append(n)

        worker = Worker(app, poll_s=0.1, lease_s=5)
        running = asyncio.create_task(worker.run())
        try:
            await record.enqueue_async(1)
            await async_wait_for(lambda: done == [1])
            with caplog.at_level(logging.INFO, logger="offload"):
                for node in cluster.nodes:
                    node.stop()
                await asyncio.sleep(3)  # every loop of the worker fails meanwhile
                assert not running.done(), "the worker stopped during the outage"
                for node in cluster.nodes:
                    node.start()  # empty again (no persistence), same cluster config
                await enqueue_when_back(lambda: record.enqueue_async(2))
                await async_wait_for(lambda: done == [1, 2], timeout_s=30)
                await async_wait_for(lambda: "reachable again" in caplog.text, timeout_s=30)
            ours = [r for r in caplog.records if r.name.startswith("offload")]
            loud = [r.getMessage() for r in ours if r.levelno >= logging.WARNING or r.exc_info]
            assert len(loud) == 1 and "broker unavailable" in loud[0], loud
        finally:
            worker.stop()
            await asyncio.wait_for(running, 10)
            await app.aclose()


async def enqueue_when_back(enqueue: Callable[[], Awaitable[object]]) -> None:
    """A producer gets `BrokerUnavailable` until the cluster agrees again: retry."""
    deadline = time.monotonic() + 30
    while True:
        try:
            await enqueue()
            return
        except BrokerUnavailable:
            assert time.monotonic() < deadline, "the cluster did not come back"
            await asyncio.sleep(0.1)


async def async_wait_for(condition: Callable[[], bool], timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.02)


async def test_worker_on_sqlite_rides_out_a_long_write_lock_with_one_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    import sqlite3

    from offload.brokers.sqlite import _connection

    monkeypatch.setattr(_connection, "BUSY_TIMEOUT_S", 0.3)  # a lock outlives it sooner
    path = tmp_path / "broker.db"
    app = Offload(f"sqlite:///{path}")
    runs: list[int] = []

    @app.task(name="record")
    async def record(n: int) -> None:
        runs.append(n)
        await asyncio.sleep(0.5)

    worker = Worker(app, poll_s=0.05, lease_s=1.5, concurrency=4)
    running = asyncio.create_task(worker.run())
    try:
        await record.enqueue_many_async([(n,) for n in range(4)])
        await async_wait_for(lambda: len(runs) == 4)
        with caplog.at_level(logging.INFO, logger="offload"):
            locker = sqlite3.connect(path, isolation_level=None)
            locker.execute("BEGIN EXCLUSIVE")  # another writer holds the file: 2.5 s
            await asyncio.sleep(2.5)
            assert not running.done(), "the worker stopped during the outage"
            locker.execute("COMMIT")
            locker.close()
            await record.enqueue_async(4)
            await async_wait_for(lambda: len(runs) == 5)
            await async_wait_for(lambda: not worker._running)
        assert sorted(runs) == [0, 1, 2, 3, 4], "a job ran twice"
        ours = [r for r in caplog.records if r.name.startswith("offload")]
        loud = [r.getMessage() for r in ours if r.levelno >= logging.WARNING or r.exc_info]
        assert len(loud) == 1 and "broker unavailable" in loud[0], loud
        assert len([r for r in ours if "reachable again" in r.getMessage()]) == 1
    finally:
        worker.stop()
        await asyncio.wait_for(running, 10)
        await app.aclose()
