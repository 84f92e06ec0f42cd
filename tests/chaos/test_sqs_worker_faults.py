"""`offload worker` on `sqs://…?state=sqlite:///…` under faults: workers SIGKILLed at
random, SQS frozen past the lease, and SQS restarted. Every job whose enqueue returned
ends succeeded, and no two runs of one job are ever alive at once.

The SQS server is moto's, a process of each test's own (`tests/sqs_server.py`); the
state store is a SQLite file shared by the workers and the producer. Two kinds of
server fault, and what each proves:

- **frozen** (SIGSTOP, then SIGCONT): every SQS call hangs, as with a stalled service or
  a network partition, while moto keeps its messages. Held longer than the lease, so
  SQS hands every running job out again by itself when it thaws: this is the fault that
  tests the worker's rule for leases that lapse on their own (`worker/lapses.py`). A
  worker whose sync handler could not be stopped exits (status 69), and is started
  again here, as its supervisor would.
- **restarted** (SIGKILL, then a new process on the port): moto keeps its queues in
  memory, so a restarted moto is empty, which SQS never is (it is durable). Messages in
  it at the restart are gone with it (their jobs would stay `queued` in the store), so
  the restart comes between two waves, once the first has finished: it proves that
  the workers and the producer ride out the endpoint going away and coming back (new
  connections, queues created again) and run every later job, not that SQS's data
  survives.
"""

from __future__ import annotations

import random
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote

import pytest

from tests.chaos._harness import Fleet, env_int, wait_for
from tests.sqs_server import MotoServer

pytestmark = [pytest.mark.chaos, pytest.mark.timeout(900)]

LEASE_S = 4.0
WORKER_ARGS = ("--lease", str(LEASE_S), "-c", "10")


@pytest.fixture
def fleet(moto: MotoServer, tmp_path: Path) -> Iterator[Fleet]:
    state = quote(f"sqlite:///{tmp_path / 'state.db'}", safe="")
    fleet = Fleet(tmp_path, moto.url("chaos", state=state, wait="1"))
    try:
        yield fleet
    finally:
        fleet.close()


def enqueue_wave(fleet: Fleet, rng: random.Random, count: int) -> list[str]:
    """`count` jobs, half sync and half async, 0.02 to 1.5 s long."""
    ids: list[str] = []
    for task in ("work", "awork"):
        calls = [(round(rng.uniform(0.02, 1.5), 3),) for _ in range(count // 2)]
        ids += [job.id for job in fleet.app.options(task).enqueue_many(calls)]
    return ids


def restart_dead(fleet: Fleet, workers: list[subprocess.Popen[bytes]]) -> list[int]:
    """Start a new worker for each that exited (as a supervisor would); their codes."""
    codes = []
    for i, proc in enumerate(workers):
        if proc.poll() is not None:
            codes.append(proc.returncode)
            workers[i] = fleet.start_worker(*WORKER_ARGS)
    return codes


def check(fleet: Fleet, ids: list[str], scenario: str, faults: int, note: str = "") -> None:
    fleet.wait_settled(ids, timeout=240)
    tally = fleet.tally(ids)
    tally.record(
        "sqs+sqlite",
        scenario,
        jobs=len(ids),
        faults=faults,
        note=f"{len(tally.twice)} ran twice{'; ' + note if note else ''}",
    )
    assert tally.clean(), tally.summary() + "\n" + fleet.worker_logs()[-4000:]


def test_sqs_workers_killed_at_random_lose_no_job_and_never_overlap_two_runs(
    fleet: Fleet,
) -> None:
    jobs, kills_wanted = env_int("JOBS", 600), env_int("KILLS", 8)
    rng = random.Random(15)
    workers = [fleet.start_worker(*WORKER_ARGS) for _ in range(3)]
    ids: list[str] = []
    for n in range(kills_wanted + 1):
        ids += enqueue_wave(fleet, rng, jobs // (kills_wanted + 1))
        enqueued = len(ids)
        wait_for(lambda: fleet.finished() >= enqueued * 0.6, timeout=180)  # noqa: B023
        if n < kills_wanted:
            victim = rng.randrange(len(workers))
            fleet.kill(workers[victim])
            workers[victim] = fleet.start_worker(*WORKER_ARGS)
    check(fleet, ids, "1 kill -9 loop (offload worker)", kills_wanted)
    assert fleet.tally(ids).twice, "no kill interrupted a running job; the test proved nothing"


def test_sqs_frozen_past_the_lease_loses_no_job_and_never_overlaps_two_runs(
    fleet: Fleet, moto: MotoServer
) -> None:
    freezes = env_int("FREEZES", 2)
    rng = random.Random(16)
    workers = [fleet.start_worker(*WORKER_ARGS) for _ in range(3)]
    ids: list[str] = []
    exits: list[int] = []
    for _ in range(freezes):
        ids += enqueue_wave(fleet, rng, 200)
        # Long jobs, running when SQS freezes: their leases lapse under them.
        long = [j.id for j in fleet.app.options("work").enqueue_many([(8.0,)] * 6)]
        long += [j.id for j in fleet.app.options("awork").enqueue_many([(8.0,)] * 6)]
        ids += long
        wait_for(lambda: sum(j in fleet.runs() for j in long) >= 6, timeout=180)  # noqa: B023
        moto.pause()
        time.sleep(2 * LEASE_S)
        moto.resume()
        time.sleep(LEASE_S)
        exits += restart_dead(fleet, workers)
    fleet.wait_settled(ids, timeout=240)
    exits += restart_dead(fleet, workers)
    codes = ", ".join(str(c) for c in exits) or "none"
    check(fleet, ids, "2 SQS frozen 2x lease", freezes, f"workers exited: {codes}")
    assert set(exits) <= {69}, fleet.worker_logs()[-4000:]
    assert fleet.tally(ids).twice, "no freeze interrupted a running job; it proved nothing"


def test_sqs_restarted_between_waves_the_workers_run_every_later_job(
    fleet: Fleet, moto: MotoServer
) -> None:
    rng = random.Random(17)
    workers = [fleet.start_worker(*WORKER_ARGS) for _ in range(2)]
    first = enqueue_wave(fleet, rng, 100)
    fleet.wait_settled(first, timeout=240)
    moto.restart()  # empty: its queues lived in its memory
    time.sleep(LEASE_S)
    later = enqueue_wave(fleet, rng, 100)
    check(
        fleet,
        first + later,
        "3 SQS restarted (empty) between waves",
        1,
        "moto keeps queues in memory: a restart mid-run would lose its messages",
    )
    assert all(proc.poll() is None for proc in workers), fleet.worker_logs()[-4000:]
