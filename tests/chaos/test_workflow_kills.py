"""Workflows under crashes: `offload worker` processes are SIGKILLed at random while a
nested workflow runs (a chain into a group of 300 two-step chains, then a callback).
Every step is started exactly once (one job per step, whatever the redeliveries), the
callback job exists once and gets every branch's result. `pytest -m chaos`."""

from __future__ import annotations

import random
import textwrap
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from offload import Job, JobInfo, JobNotFound, JobState, Offload, chain, group
from offload.envelope import TERMINAL_STATES
from tests.chaos._harness import BROKERS, Fleet, wait_for
from tests.chaos._report import record

pytestmark = pytest.mark.chaos

BRANCHES = 300
WORKER_ARGS = ("--lease", "1", "-c", "10")

APP_SOURCE = textwrap.dedent(
    """
    import os, pathlib, time
    from offload import Offload, current_job

    app = Offload()
    # Every kill also burns an attempt of the jobs its worker had prefetched, and a
    # 1 s lease on a busy machine lapses now and then: a budget no kill pattern
    # exhausts, since this test is about losing or doubling steps, not about retries.
    OUT = pathlib.Path(os.environ["CHAOS_RUNS"])

    @app.task(name="start", max_attempts=50)
    def start(n: int) -> int:
        return n

    @app.task(name="leaf", max_attempts=50)
    def leaf(base: int, i: int) -> int:
        (OUT / f"leaf.{i}.{current_job().attempt}").touch()
        time.sleep(0.25)
        return base + i

    @app.task(name="tail", max_attempts=50)
    def tail(x: int) -> int:
        time.sleep(0.01)
        return x * 2

    @app.task(name="collect", max_attempts=50)
    def collect(values: list) -> int:
        (OUT / f"collect.{current_job().attempt}").touch()
        return sum(v for v in values if v is not None)
    """
)


def _producer(url: str) -> Offload:
    """The producer's app: the same task names and signatures as the workers' app."""
    app = Offload(url)

    @app.task(name="start")
    def start(n: int) -> int: ...

    @app.task(name="leaf")
    def leaf(base: int, i: int) -> int: ...

    @app.task(name="tail")
    def tail(x: int) -> int: ...

    @app.task(name="collect")
    def collect(values: list[int | None]) -> int: ...

    return app


async def _workflow_jobs(app: Offload, workflow_id: str) -> list[JobInfo]:
    broker = await app.connected_broker()  # the producer loop's own connections
    return await broker.workflow_jobs(workflow_id, limit=10_000)


def _succeeded(job: Job) -> bool:
    try:
        return job.state() is JobState.SUCCEEDED
    except JobNotFound:  # not started yet
        return False


@pytest.mark.parametrize("name", BROKERS)
def test_random_sigkills_neither_lose_nor_double_a_workflow_step(
    name: str, tmp_path: Path, broker_url: Callable[[str], str]
) -> None:
    url = broker_url(name)
    fleet = Fleet(tmp_path, url, app_source=APP_SOURCE)
    out = fleet.runs_dir
    app = _producer(url)
    start, leaf, tail, collect = (app.tasks[n] for n in ("start", "leaf", "tail", "collect"))
    try:
        flow = chain(
            start.call(1000),
            group(chain(leaf.partial(i), tail.partial()) for i in range(BRANCHES)),
            collect.partial(),
        ).enqueue()
        assert flow.last is not None
        rng = random.Random(99)
        workers = [fleet.start_worker(*WORKER_ARGS) for _ in range(3)]
        kills = 0
        wait_for(lambda: any(out.glob("leaf.*")), timeout=60)  # the kills hit the group
        while kills < 12 and not _succeeded(flow.last):
            time.sleep(rng.uniform(0.3, 0.7))
            victim = rng.randrange(len(workers))
            fleet.kill(workers[victim])
            workers[victim] = fleet.start_worker(*WORKER_ARGS)
            kills += 1

        expected = sum((1000 + i) * 2 for i in range(BRANCHES))
        result = flow.result(timeout=180)
        jobs = app.portal.run(_workflow_jobs(app, flow.id))
        unhappy = [(i.task, i.state, i.attempt, i.error) for i in jobs if i.state != "succeeded"]
        tasks = [info.task for info in jobs]
        record(
            name,
            "1 kill -9 loop, nested workflow",
            jobs=len(jobs),
            faults=kills,
            lost=max(0, 2 * BRANCHES + 2 - len(jobs)) + len(unhappy),
            overlapping=None,
            stuck=sum(1 for i in jobs if i.state not in TERMINAL_STATES),
            note=f"{len(list(out.glob('leaf.*.2')))} steps ran twice, "
            f"{max(0, len(jobs) - 2 * BRANCHES - 2)} extra step jobs",
        )
        assert result == expected, unhappy
        assert tasks.count("start") == 1
        assert tasks.count("leaf") == BRANCHES
        assert tasks.count("tail") == BRANCHES
        assert tasks.count("collect") == 1  # the callback was started exactly once
        assert {info.state for info in jobs} == {JobState.SUCCEEDED}
        redelivered = list(out.glob("leaf.*.2")) + list(out.glob("collect.2"))
        assert redelivered, "no kill interrupted a running step; the test proved nothing"
        assert kills >= 5
    finally:
        fleet.close()
        app.close()
