"""`offload worker` as a real subprocess on the embedded SQLite broker: crashes,
graceful shutdown, bad input, and a job that keeps killing its worker."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from offload import JobState, Offload
from offload.brokers.base import JobInfo

APP_SOURCE = textwrap.dedent(
    """
    import os, pathlib, time
    from offload import Backoff, Offload, current_job

    app = Offload()
    OUT = pathlib.Path(os.environ["JOBS_OUT"])

    @app.task(name="slow")
    def slow(tag: str, seconds: float) -> str:
        attempt = current_job().attempt
        (OUT / f"{tag}.{attempt}.started").touch()
        time.sleep(seconds)
        (OUT / f"{tag}.{attempt}.done").touch()
        return tag

    @app.task(name="suicide", max_attempts=2)
    def suicide() -> None:
        os._exit(13)

    @app.task(name="ok")
    def ok(n: int) -> int:
        return n

    @app.task(name="gc_settings")
    def gc_settings() -> list[int]:
        import gc
        return [gc.get_threshold()[0], gc.get_freeze_count()]
    """
)


class Env:
    def __init__(self, tmp_path: Path) -> None:
        self.dir = tmp_path
        self.out = tmp_path / "out"
        self.out.mkdir()
        (tmp_path / "jobsapp.py").write_text(APP_SOURCE)
        self.url = f"sqlite:///{tmp_path / 'broker.db'}"
        self.env = {
            **os.environ,
            "OFFLOAD_URL": self.url,
            "JOBS_OUT": str(self.out),
            "PYTHONPATH": str(tmp_path),
        }
        self.procs: list[subprocess.Popen[bytes]] = []
        self.app = Offload(self.url)

    def offload(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "offload", *args],
            env=self.env,
            cwd=self.dir,
            capture_output=True,
            text=True,
            timeout=60,
        )

    def start_worker(self, *args: str) -> subprocess.Popen[bytes]:
        proc = subprocess.Popen(
            [sys.executable, "-m", "offload", "worker", "jobsapp:app", "--poll", "0.05", *args],
            env=self.env,
            cwd=self.dir,
        )
        self.procs.append(proc)
        return proc

    def info(self, job_id: str) -> JobInfo:
        return self.app.job(job_id).info()

    def close(self) -> None:
        stop_all(self.procs, timeout=10)
        self.app.close()


def stop_all(procs: list[subprocess.Popen[bytes]], timeout: float) -> None:
    """SIGTERM every process still running (a supervisor forwards it to its children),
    then wait for each; one that outlives `timeout` is killed."""
    for proc in procs:
        if proc.poll() is None:
            proc.terminate()
    for proc in procs:
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def wait_for(predicate: Callable[[], bool], timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout} s")
        time.sleep(0.05)


@pytest.fixture
def env(tmp_path: Path) -> Iterator[Env]:
    e = Env(tmp_path)
    yield e
    e.close()


def test_killed_worker_job_completes_on_another_worker(env: Env) -> None:
    job = env.app.enqueue("slow", "a", 1.0)
    first = env.start_worker("--lease", "1")
    wait_for(lambda: (env.out / "a.1.started").exists())
    first.send_signal(signal.SIGKILL)
    first.wait()
    killed_at = time.monotonic()

    env.start_worker("--lease", "1")
    wait_for(lambda: env.info(job.id).state is JobState.SUCCEEDED)
    # lease (1 s) + the new run (1 s) + start-up; well within lease + sweep time
    assert time.monotonic() - killed_at < 10
    info = env.info(job.id)
    assert info.attempt == 2
    assert not (env.out / "a.1.done").exists()
    assert (env.out / "a.2.done").exists()
    assert sorted(p.name for p in env.out.iterdir()) == ["a.1.started", "a.2.done", "a.2.started"]


def test_sigterm_finishes_running_jobs_and_releases_unstarted(env: Env) -> None:
    jobs = [env.app.enqueue("slow", f"t{i}", 1.0) for i in range(3)]
    worker = env.start_worker("--concurrency", "1", "--prefetch", "2", "--grace", "10")
    wait_for(lambda: (env.out / "t0.1.started").exists())
    wait_for(lambda: env.info(jobs[2].id).state is JobState.RUNNING)  # prefetched
    worker.send_signal(signal.SIGTERM)
    assert worker.wait(timeout=15) == 0

    first = env.info(jobs[0].id)
    assert first.state is JobState.SUCCEEDED
    assert (env.out / "t0.1.done").exists()
    for job in jobs[1:]:
        info = env.info(job.id)
        assert (info.state, info.attempt) == (JobState.QUEUED, 0)
    env.start_worker()
    wait_for(lambda: all(env.info(j.id).state is JobState.SUCCEEDED for j in jobs))


def test_garbage_row_is_buried_and_worker_goes_on(env: Env) -> None:
    good = env.app.enqueue("ok", 1)
    db = sqlite3.connect(env.dir / "broker.db")
    with db:
        db.execute("UPDATE offload_jobs SET payload = ? WHERE id = ?", (b"{not json", good.id))
    db.close()
    after = env.app.enqueue("ok", 2)
    env.start_worker()
    wait_for(lambda: env.info(after.id).state is JobState.SUCCEEDED)
    # Both were reserved in one batch: the burial (its attempt recorded first) may
    # land after the other job's ack.
    wait_for(lambda: env.info(good.id).state is not JobState.RUNNING)
    info = env.info(good.id)
    assert info.state is JobState.DEAD
    assert info.error is not None and info.error.type == "Undecodable"


def test_unknown_task_goes_to_dead_letter_queue_not_lost(env: Env) -> None:
    job = env.app.enqueue("reports.not_deployed", 1)
    env.start_worker()
    wait_for(lambda: env.info(job.id).state is JobState.DEAD)
    listing = env.offload("dlq", "list")
    assert listing.returncode == 0
    assert job.id in listing.stdout and "UnknownTask" in listing.stdout


def test_job_that_keeps_killing_its_worker_is_buried(env: Env) -> None:
    job = env.app.enqueue("suicide")  # max_attempts=2 comes from the worker's task
    env.start_worker("--processes", "2", "--lease", "1")
    wait_for(lambda: env.info(job.id).state is JobState.DEAD, timeout=40)
    info = env.info(job.id)
    assert info.error is not None and info.error.type == "WorkerLost"
    assert info.attempt == 3
    after = env.app.enqueue("ok", 6)  # the supervised workers go on
    wait_for(lambda: env.info(after.id).state is JobState.SUCCEEDED)


def test_long_job_is_not_redelivered_while_its_worker_lives(env: Env) -> None:
    job = env.app.enqueue("slow", "long", 3.0)
    env.start_worker("--lease", "0.6")
    env.start_worker("--lease", "0.6")  # an idle rival that would take a lapsed lease
    wait_for(lambda: env.info(job.id).state is JobState.SUCCEEDED)
    assert env.info(job.id).attempt == 1
    assert sorted(p.name for p in env.out.iterdir()) == ["long.1.done", "long.1.started"]


def test_json_logs_carry_the_job_fields(env: Env) -> None:
    job = env.app.enqueue("reports.not_deployed")
    worker = subprocess.Popen(
        [sys.executable, "-m", "offload", "worker", "jobsapp:app", "--log-format", "json"],
        env=env.env,
        cwd=env.dir,
        stderr=subprocess.PIPE,
        text=True,
    )
    env.procs.append(worker)  # type: ignore[arg-type]
    wait_for(lambda: env.info(job.id).state is JobState.DEAD)
    worker.send_signal(signal.SIGTERM)
    _, stderr = worker.communicate(timeout=20)
    records = [json.loads(line) for line in stderr.splitlines()]
    buried = [r for r in records if r.get("action") == "buried"]
    assert len(buried) == 1
    assert buried[0]["job_id"] == job.id
    assert buried[0]["task"] == "reports.not_deployed"
    assert buried[0]["level"] == "error"


def test_supervised_workers_stop_when_the_supervisor_is_killed(env: Env) -> None:
    supervisor = env.start_worker("--processes", "2")
    wait_for(lambda: len(env.app.portal.run(env.app.broker.workers())) == 2)
    supervisor.send_signal(signal.SIGKILL)
    supervisor.wait()
    # Orphaned children notice within a second or so and unregister on their way out.
    wait_for(lambda: env.app.portal.run(env.app.broker.workers()) == [], timeout=15)


def test_worker_process_freezes_its_start_up_and_collects_young_objects_less_often(
    env: Env,
) -> None:
    """`offload worker` tunes the collector for a long-lived process (`settle_gc`):
    the loaded app is frozen out of the full passes, and the youngest generation is
    collected every 10,000 allocations, not Python's 700 (2,000 from 3.13)."""
    job = env.app.enqueue("gc_settings")
    env.start_worker()
    threshold, frozen = job.result(timeout=30)
    assert threshold == 10_000
    assert frozen > 1000  # the app, offload and their imports
