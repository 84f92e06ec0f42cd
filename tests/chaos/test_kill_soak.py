"""Crash loops: `offload worker` processes are SIGKILLed at random and restarted while
a few thousand sync and async jobs run. Every job whose enqueue returned ends
succeeded, a run of it returned, and no two runs of one job were ever alive at once
(a run again after a kill is allowed: delivery is at-least-once).

`CHAOS_JOBS` (default 2000) and `CHAOS_KILLS` (default 12) make it longer."""

from __future__ import annotations

import random
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.chaos._harness import BROKERS, Fleet, StorelessFleet, env_int, wait_for

pytestmark = [pytest.mark.chaos, pytest.mark.timeout(900)]

WORKER_ARGS = ("--lease", "2", "-c", "10")


@pytest.mark.parametrize("name", [*BROKERS, "amqp", "amqp_sqlite", "amqp_postgres"])
def test_random_sigkills_lose_no_job_and_never_overlap_two_runs(
    name: str, tmp_path: Path, broker_url: Callable[[str], str]
) -> None:
    jobs, kills_wanted = env_int("JOBS", 2000), env_int("KILLS", 12)
    rng = random.Random(1234)
    fleet = (StorelessFleet if name == "amqp" else Fleet)(tmp_path, broker_url(name))
    try:
        # Enqueued in waves between the kills, so that work runs throughout.
        waves = [range(jobs)[w :: kills_wanted + 1] for w in range(kills_wanted + 1)]
        ids: list[str] = []
        workers = [fleet.start_worker(*WORKER_ARGS) for _ in range(3)]
        kills = 0
        for n, wave in enumerate(waves):
            calls = [(i % 2, round(rng.uniform(0.02, 0.3), 3)) for i in wave]
            for task in ("work", "awork"):
                batch = [(s,) for parity, s in calls if parity == (task == "awork")]
                ids += [j.id for j in fleet.app.options(task).enqueue_many(batch)]
            enqueued = len(ids)
            wait_for(lambda: fleet.finished() >= enqueued * 0.7, timeout=120)  # noqa: B023
            if n < kills_wanted:
                victim = rng.randrange(len(workers))
                fleet.kill(workers[victim])
                workers[victim] = fleet.start_worker(*WORKER_ARGS)
                kills += 1
        fleet.wait_settled(ids, timeout=120 + jobs * 0.05)
        tally = fleet.tally(ids)
        tally.record(
            name,
            "1 kill -9 loop",
            jobs=jobs,
            faults=kills,
            note=f"{len(tally.twice)} ran twice",
        )
        assert tally.clean(), tally.summary()
        assert tally.twice, "no kill interrupted a running job; the test proved nothing"
    finally:
        fleet.close()
