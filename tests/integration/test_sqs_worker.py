"""The worker on `sqs://` (moto's server, a process of the test's own): SQS hands a
message out again by itself once its visibility lapses, so a job whose lease the worker
cannot extend in time is stopped before then and never settled
(`offload.worker.lapses`); and jobs run end to end through `Offload(url)`.

The fault is real: the server is frozen (SIGSTOP), so every SQS call hangs, as with a
stalled service or a network partition, and thawed after the lease's deadline.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import textwrap
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from offload import Offload, current_job
from offload.worker.lapses import EXIT_LEASE_LAPSED
from tests.running import working
from tests.sqs_server import MotoServer

LEASE_S = 3.0
#: How long the first attempt's handler runs: well past the lease and the freeze.
SLOW_S = 10.0


async def slow_async(runs: str) -> str:
    attempt = current_job().attempt
    Path(runs, f"{attempt}.started").touch()
    if attempt == 1:
        await asyncio.sleep(SLOW_S)
    Path(runs, f"{attempt}.finished").touch()
    return "done"


def slow_sync(runs: str) -> str:
    """Runs in a child process (the task has a timeout), which can be killed."""
    attempt = current_job().attempt
    Path(runs, f"{attempt}.started").touch()
    if attempt == 1:
        time.sleep(SLOW_S)
    Path(runs, f"{attempt}.finished").touch()
    return "done"


#: `offload worker` runs this app's `slow` in a thread: the handler nothing can stop.
THREAD_APP = textwrap.dedent(
    """
    from offload import Offload
    from tests.integration.test_sqs_worker import slow_sync

    app = Offload()
    app.task(name="slow")(slow_sync)
    """
)
ROOT = Path(__file__).resolve().parents[2]
WORKER_ARGS = ("--lease", str(LEASE_S), "-c", "1", "--poll", "1")


@pytest.fixture
async def app(moto: MotoServer, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[Offload]:
    monkeypatch.delenv("OFFLOAD_STATE_URL", raising=False)
    app = Offload(moto.url("lapse", wait="1"))
    try:
        yield app
    finally:
        await app.aclose()


async def until(check: object, within: float) -> None:
    assert callable(check)
    deadline = time.monotonic() + within
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"not reached within {within} s")
        await asyncio.sleep(0.1)


@pytest.mark.parametrize("kind", ["async", "child process"])
async def test_a_job_whose_lease_cannot_be_extended_is_stopped_before_sqs_hands_it_out(
    kind: str, app: Offload, moto: MotoServer, tmp_path: Path
) -> None:
    # Given a worker running a long job on SQS with a short lease
    if kind == "async":
        app.task(name="slow")(slow_async)
    else:
        app.task(name="slow", timeout=60)(slow_sync)
    runs = tmp_path / "runs"
    runs.mkdir()
    await app.enqueue_async("slow", str(runs))
    async with working(app, concurrency=1, lease_s=LEASE_S, poll_s=1.0) as worker:
        await until((runs / "1.started").exists, 30)
        # When SQS stops answering (every call hangs) past the lease's deadline
        moto.pause()
        frozen_at = time.monotonic()
        try:
            await until(lambda: not worker.running_jobs(), LEASE_S + 2)
            stopped_after = time.monotonic() - frozen_at
            await asyncio.sleep(LEASE_S + 1 - (time.monotonic() - frozen_at))
        finally:
            moto.resume()
        # Then the first attempt was stopped before its deadline, and the job ran again
        # once SQS handed it out, once; the first attempt never finished
        assert stopped_after < LEASE_S
        await until((runs / "2.finished").exists, 60)
        await asyncio.sleep(max(0.0, frozen_at + SLOW_S + 1 - time.monotonic()))
        assert sorted(p.name for p in runs.iterdir()) == ["1.started", "2.finished", "2.started"]


async def test_a_job_whose_lease_is_extended_runs_past_it_once(
    app: Offload, tmp_path: Path
) -> None:
    # A healthy worker extends every third of the lease: a job three leases long is
    # never handed out again, and nothing stops it.
    task = app.task(name="slow")(slow_async)
    runs = tmp_path / "runs"
    runs.mkdir()
    await task.enqueue_async(str(runs))
    async with working(app, concurrency=2, lease_s=LEASE_S, poll_s=1.0):
        await until((runs / "1.finished").exists, SLOW_S + 30)
        await asyncio.sleep(LEASE_S + 1)
        assert sorted(p.name for p in runs.iterdir()) == ["1.finished", "1.started"]


async def test_a_cli_worker_whose_sync_job_cannot_keep_its_lease_ends_itself_before_the_deadline(
    app: Offload, moto: MotoServer, tmp_path: Path
) -> None:
    # Given `offload worker` running a sync handler (in a thread) on SQS
    task = app.task(name="slow")(slow_sync)
    runs = tmp_path / "runs"
    runs.mkdir()
    await task.enqueue_async(str(runs))
    (tmp_path / "threadapp.py").write_text(THREAD_APP)
    env = {**os.environ, "OFFLOAD_URL": app.broker.url, "PYTHONPATH": f"{tmp_path}:{ROOT}"}
    env.pop("OFFLOAD_STATE_URL", None)
    with (tmp_path / "worker.log").open("wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "offload", "worker", "threadapp:app", *WORKER_ARGS],
            env=env,
            cwd=tmp_path,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    try:
        await until((runs / "1.started").exists, 60)
        # When SQS stops answering past the lease's deadline
        moto.pause()
        frozen_at = time.monotonic()
        try:
            await until(lambda: proc.poll() is not None, LEASE_S + 2)
            ended_after = time.monotonic() - frozen_at
        finally:
            moto.resume()
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
    # Then the process ended itself before SQS could hand the job out again, saying why
    log_text = (tmp_path / "worker.log").read_text()
    assert proc.returncode == EXIT_LEASE_LAPSED, log_text
    assert ended_after < LEASE_S, log_text
    assert "sync handler cannot be stopped" in log_text
    # and the job runs again elsewhere, once, the first attempt never finishing
    async with working(app, concurrency=1, lease_s=LEASE_S, poll_s=1.0):
        await until((runs / "2.finished").exists, 60)
        await asyncio.sleep(max(0.0, frozen_at + SLOW_S + 1 - time.monotonic()))
        assert sorted(p.name for p in runs.iterdir()) == ["1.started", "2.finished", "2.started"]
