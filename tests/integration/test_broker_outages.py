"""`offload worker` as a real subprocess while its broker goes away: PostgreSQL backends
terminated under it (a failover, a pgbouncer restart, an idle timeout), and a Redis
server of the test's own killed and started again. The worker stays up, every job
finishes once, and the log says so in a few lines, not one per loop per second.

Only the test's own server and the worker's own backends (selected by an
`application_name` unique to the test) are ever touched.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from offload import JobState, Offload
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


class Worker:
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


def succeeded(app: Offload, queue: str = "default") -> int:
    stats = app.portal.run(app.broker.counts([queue]))[queue].states
    return stats[JobState.SUCCEEDED]


# -- PostgreSQL -------------------------------------------------------------------------


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
    worker = Worker(tmp_path, url, "-c", "4", "--poll", "0.05")
    try:
        total, terminated = 0, 0
        for round_ in range(6):
            batch = [(f"r{round_}j{i}", 0.01) for i in range(40)]
            app.options("work").enqueue_many(batch)
            total += len(batch)
            time.sleep(0.2)
            terminated += terminate_backends(postgres_dsn, name)  # while it runs jobs
            wait_for(lambda n=total: succeeded(app) == n or not worker.alive(), "the batch")
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
        assert succeeded(app) == total
        assert "Traceback" not in worker.text()
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
    app = Offload(url)
    worker = Worker(tmp_path, url, "-c", "4", "--lease", "30")
    try:
        jobs = [(f"j{i}", 0.3) for i in range(40)]
        app.options("work").enqueue_many(jobs)
        wait_for(lambda: len(worker.runs()) >= 8, "the first jobs")
        own_redis.stop()
        time.sleep(4)  # jobs finish meanwhile, and every loop of the worker fails
        assert worker.alive(), worker.text()
        own_redis.start()
        wait_for(lambda: succeeded(app) == len(jobs), "every job", timeout_s=90)
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
        app.close()
