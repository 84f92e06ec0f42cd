"""Redis: idle workers parked for a handoff (`brokers/redis/_handoff.py`) are SIGKILLed
at random while jobs are enqueued one at a time, each handed by its enqueue to a
parked worker, dead or alive. Every job ends succeeded, none runs twice at once: a job
handed to a worker that had died runs elsewhere once its lease lapses.

`CHAOS_JOBS` (default 400) and `CHAOS_KILLS` (default 8) make it longer."""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.chaos._harness import Fleet, env_int

pytestmark = [pytest.mark.chaos, pytest.mark.timeout(600)]

WORKER_ARGS = ("--lease", "2", "-c", "4")


@pytest.mark.parametrize("name", ["redis", "redis_cluster"])
def test_parked_workers_killed_at_random_lose_no_handed_job(
    name: str, tmp_path: Path, broker_url: Callable[[str], str]
) -> None:
    jobs, kills_wanted = env_int("JOBS", 400), env_int("KILLS", 8)
    rng = random.Random(4321)
    fleet = Fleet(tmp_path, broker_url(name))
    try:
        workers = [fleet.start_worker(*WORKER_ARGS) for _ in range(3)]
        time.sleep(3)  # all parked
        kill_at = set(rng.sample(range(jobs), kills_wanted))
        work = fleet.app.options("work")
        ids: list[str] = []
        for i in range(jobs):
            ids.append(work.enqueue(0.01).id)  # one at a time: handed over if one is parked
            time.sleep(0.01)
            if i in kill_at:
                victim = rng.randrange(len(workers))
                fleet.kill(workers[victim])
                workers[victim] = fleet.start_worker(*WORKER_ARGS)
        fleet.wait_settled(ids, timeout=120)
        tally = fleet.tally(ids)
        late = [
            job_id
            for job_id, runs in fleet.runs().items()
            if job_id in set(ids) and min(run.attempt for run in runs) > 1
        ]
        tally.record(
            name,
            "parked workers killed (handoff)",
            jobs=jobs,
            faults=kills_wanted,
            note=f"{len(late)} first ran at attempt 2 or later (leased to a killed worker)",
        )
        assert tally.clean(), tally.summary()
    finally:
        fleet.close()
