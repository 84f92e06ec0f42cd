"""Deploys under load: `offload worker` processes with a short --grace are stopped at
random (SIGTERM, or SIGINT twice) and replaced while long sync jobs, in threads and in
child processes, run on every broker. No job is lost, none is stuck, and no two runs
of a job ever overlap (from the pid-stamped run records). `pytest -m chaos`."""

from __future__ import annotations

import random
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from offload import JobState, Offload
from offload.brokers.base import QueueStats
from tests.integration.test_worker_process import wait_for
from tests.integration.test_worker_shutdown import Shell

pytestmark = pytest.mark.chaos

JOBS = 60
WORKERS = 3
STOPS = 15
WORKER_ARGS = ("--grace", "0.5", "--lease", "2", "-c", "4")


async def _counts(app: Offload) -> dict[str, QueueStats]:
    """Through the portal's own broker (`connected_broker`), which `close()` closes."""
    return dict(await (await app.connected_broker()).counts())


@pytest.mark.parametrize("name", ["sqlite", "postgres", "redis"])
def test_stops_past_the_grace_period_never_run_a_job_twice_at_once(
    tmp_path: Path, broker_url: Callable[[str], str], name: str
) -> None:
    shell = Shell(tmp_path, None if name == "sqlite" else broker_url(name))
    rng = random.Random(10)
    try:
        calls = [
            ("steady" if i % 2 else "steady_child", (rng.uniform(0.5, 4.0),)) for i in range(JOBS)
        ]
        jobs = [shell.app.enqueue(task, *args) for task, args in calls]
        workers = [shell.start(*WORKER_ARGS) for _ in range(WORKERS)]
        stopped: list[subprocess.Popen[bytes]] = []
        for n in range(STOPS):
            time.sleep(rng.uniform(0.8, 2.0))
            i = rng.randrange(WORKERS)
            victim = workers[i]
            # A signal during Python's start-up is Python's KeyboardInterrupt, not ours.
            wait_for(lambda v=victim: " started: queues=" in shell.log(v), timeout=60)  # type: ignore[misc]
            if n % 3 == 2:  # Ctrl-C twice: end the grace period at once
                victim.send_signal(signal.SIGINT)
                time.sleep(0.1)
                victim.send_signal(signal.SIGINT)
            else:
                victim.send_signal(signal.SIGTERM)
            stopped.append(victim)
            workers[i] = shell.start(*WORKER_ARGS)

        def done() -> bool:
            counts = shell.app.portal.run(_counts(shell.app))
            return counts["default"].states[JobState.SUCCEEDED] == JOBS

        wait_for(done, timeout=180)
        exits = [proc.wait(timeout=30) for proc in stopped]
        overlaps = 0
        for job in jobs:
            try:
                shell.runs.assert_never_overlapped(job.id)
            except AssertionError:
                overlaps += 1
        redelivered = sum(len(shell.runs.pids(j.id)) > 1 for j in jobs)
        logs = "".join(shell.log(p) for p in stopped)
        print(
            f"\n| {name} | {JOBS} jobs | {STOPS} stops | lost 0 | "
            f"run twice at once {overlaps} | stuck 0 | redelivered {redelivered} | "
            f"exit codes {sorted(set(exits))} |"
        )
        assert overlaps == 0
        assert redelivered > 0, "no stop interrupted a job; the test proved nothing"
        assert "Traceback" not in logs
    finally:
        shell.close()
