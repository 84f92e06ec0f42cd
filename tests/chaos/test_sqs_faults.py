"""SQS under faults: consumers SIGKILLed at random while jobs run, and the SQS server
itself going away.

The consumers are `tests/chaos/sqs_consumer.py` processes on the delivery role
(`SQSBroker`), against a moto server of the test's own. What a server restart means
here: moto keeps its queues in memory, so a restarted moto is empty, which SQS never
is (it is durable and multi-zone). The meaningful fault is the one SQS clients do
meet, connections failing while the service is unreachable; the restart scenario proves
that every call then fails fast with `BrokerUnavailable` (no hang, no other error),
that a lease cannot be claimed while SQS is unreachable, and that the same broker
object works again once the server answers, finding or creating its queues anew.
"""

from __future__ import annotations

import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from offload.brokers.sqs import SQSBroker
from offload.errors import BrokerUnavailable
from tests.chaos import _report
from tests.chaos._harness import env_int, overlapping, read_runs
from tests.conformance.helpers import make_job
from tests.sqs_server import MotoServer

pytestmark = [pytest.mark.chaos, pytest.mark.timeout(600)]

LEASE_S = 6.0
ROOT = Path(__file__).resolve().parents[2]


def start_consumer(url: str, runs: Path, logs: Path) -> subprocess.Popen[bytes]:
    with (logs / f"consumer-{time.monotonic_ns()}.log").open("wb") as log:
        return subprocess.Popen(
            [sys.executable, "-m", "tests.chaos.sqs_consumer", url, str(runs), str(LEASE_S)],
            cwd=ROOT,
            stdout=log,
            stderr=subprocess.STDOUT,
        )


def working(runs: Path, procs: list[subprocess.Popen[bytes]]) -> list[subprocess.Popen[bytes]]:
    """The consumers that have started a job (a process is slow to start under load)."""
    return [p for p in procs if (runs / f"{p.pid}.log").exists()]


async def settled(broker: SQSBroker) -> bool:
    """Nothing left in SQS: every job was deleted by an ack (or dead-lettered)."""
    depth = await broker.sqs.depth("default")
    return depth["ready"] + depth["leased"] + depth["delayed"] == 0


async def test_sqs_consumers_killed_at_random_lose_no_job_and_never_overlap_a_run(
    moto: MotoServer, tmp_path: Path
) -> None:
    jobs, kills = env_int("JOBS", 150), env_int("KILLS", 6)
    url = moto.url("chaos")
    runs, logs = tmp_path / "runs", tmp_path / "logs"
    runs.mkdir()
    logs.mkdir()
    rng = random.Random(15)
    async with SQSBroker(url) as producer:
        batch = [
            make_job(producer.clock, "work", args=[rng.uniform(0.05, 0.6)]) for _ in range(jobs)
        ]
        await producer.enqueue(batch)
    ids = {envelope.id for envelope, _ in batch}
    procs = [start_consumer(url, runs, logs) for _ in range(3)]
    done = False
    try:
        for _ in range(kills):
            # kill one that is running jobs, at a random moment of its work
            while not (candidates := working(runs, procs)):
                time.sleep(0.2)
            time.sleep(rng.uniform(0.2, 1.5))
            victim = rng.choice(candidates)
            procs.remove(victim)
            victim.send_signal(signal.SIGKILL)
            victim.wait()
            procs.append(start_consumer(url, runs, logs))
        async with SQSBroker(url) as observer:
            deadline = time.monotonic() + 240
            while time.monotonic() < deadline and not (done := await settled(observer)):
                time.sleep(1)
            dead = await observer.sqs.dead("default")
    finally:
        for proc in procs:
            proc.kill()
            proc.wait()
    by_job = read_runs(runs)
    # lost: never run to its end, or parked as dead (nothing here fails a job)
    lost = sorted(i for i in ids if not any(r.ended for r in by_job.get(i, [])))
    lost += [m.job_id for m in dead]
    overlaps = [job for job, job_runs in by_job.items() if overlapping(job_runs)]
    _report.record(
        "sqs", "consumers SIGKILLed", jobs=jobs, faults=kills, lost=len(lost),
        overlapping=len(overlaps), stuck=0,
        note=f"ran twice: {sum(len(r) > 1 for r in by_job.values())}",
    )  # fmt: skip
    assert done, "jobs still in SQS after 240 s"
    assert not lost, (lost[:5], "\n".join(p.read_text() for p in logs.glob("*.log"))[-3000:])
    assert not overlaps


async def test_sqs_server_gone_fails_calls_fast_and_the_broker_recovers_when_it_answers(
    moto: MotoServer,
) -> None:
    async with SQSBroker(moto.url("restart")) as broker:
        await broker.enqueue([make_job(broker.clock)])
        [lease] = await broker.reserve(["default"], worker_id="w", lease_s=30, limit=1)
        moto.stop()
        started = time.monotonic()
        for call in (
            broker.enqueue([make_job(broker.clock)]),
            broker.reserve(["default"], worker_id="w", lease_s=30, limit=1),
            broker.extend([lease], 30),
        ):
            with pytest.raises(BrokerUnavailable):
                await call
        assert time.monotonic() - started < 30
        moto.start()  # empty: moto's queues lived in its memory
        # the lease died with the server's state: it is not claimed as held
        assert await broker.extend([lease], 30) == [False]
        envelope, payload = make_job(broker.clock)
        await broker.enqueue([(envelope, payload)])  # its queues are created again
        [again] = await broker.reserve(["default"], worker_id="w", lease_s=30, limit=1)
        assert again.job_id == envelope.id
    _report.record(
        "sqs", "server restarted (empty)", jobs=2, faults=1, lost=0, overlapping=None, stuck=0,
        note="moto keeps queues in memory: jobs sent before the restart are gone with it",
    )  # fmt: skip
