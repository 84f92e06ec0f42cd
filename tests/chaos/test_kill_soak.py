"""Soak under crashes: workers are SIGKILLed at random while 2,000 jobs run; every job
still succeeds, none is lost. Not in the default run: `pytest -m chaos`."""

from __future__ import annotations

import random
import signal
import time
from pathlib import Path

import pytest

from offload import JobState
from tests.integration.test_worker_process import Env, wait_for

pytestmark = pytest.mark.chaos

JOBS = 2000


def test_random_sigkills_lose_no_job(tmp_path: Path) -> None:
    env = Env(tmp_path)
    rng = random.Random(1234)
    try:
        jobs = env.app.options("slow").enqueue_many([(f"j{i}", 0.05) for i in range(JOBS)])
        workers = [env.start_worker("--lease", "1", "-c", "20") for _ in range(3)]
        kills = 0
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            stats = env.app.portal.run(env.app.broker.counts())["default"].states
            if stats[JobState.SUCCEEDED] == JOBS:
                break
            time.sleep(rng.uniform(0.2, 0.6))
            victim = rng.randrange(len(workers))
            if kills < 15:
                workers[victim].send_signal(signal.SIGKILL)
                workers[victim].wait()
                workers[victim] = env.start_worker("--lease", "1", "-c", "20")
                kills += 1
        wait_for(
            lambda: (
                env.app.portal.run(env.app.broker.counts())["default"].states[JobState.SUCCEEDED]
                == JOBS
            ),
            timeout=60,
        )
        done = {p.name.split(".")[0] for p in env.out.glob("*.done")}
        assert done == {f"j{i}" for i in range(JOBS)}
        assert all(env.info(j.id).state is JobState.SUCCEEDED for j in jobs[:50])
        assert kills >= 5
        redelivered = {p.name.split(".")[0] for p in env.out.glob("*.2.started")}
        assert redelivered, "no kill interrupted a running job; the test proved nothing"
    finally:
        env.close()
