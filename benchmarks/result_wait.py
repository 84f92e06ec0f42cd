"""How fast `Job.result()` returns after a job ends in another worker, and how often it
reads the job meanwhile: the broker's push (`Broker.wait_finished`) against the re-read
backoff (5 → 250 ms) that every broker used before. Prints a Markdown table.

    python benchmarks/result_wait.py [--jobs 100] [--brokers sqlite,postgres,redis]

Each job sleeps a random 20 to 200 ms in a worker with its own app and broker
connections (as another process would); the producer waits on `result_async()`. The
latency is from the job's `finished_at` (broker clock) to the return. A benchmark, not
a test: never part of the default test run.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import random
import statistics
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

from offload import Offload, Worker

URLS = {
    "sqlite": "sqlite:///{tmp}/bench.db",
    "postgres": "postgresql://postgres@127.0.0.1:5432/test?schema=bench_result_{tag}",
    "redis": "redis://127.0.0.1:6379/13?prefix=bench-result-{tag}",
}


async def run(url: str, jobs: int, mode: str) -> dict[str, float]:
    producer, runner = Offload(url), Offload(url)

    @runner.task(name="nap")
    async def nap(seconds: float) -> float:
        await asyncio.sleep(seconds)
        return seconds

    broker = await producer.connected_broker()
    if mode == "re-read":  # what Job.result() did before: no push, back off

        async def sleep(job_id: str, timeout_s: float) -> None:
            await asyncio.sleep(timeout_s)

        broker.capabilities = dataclasses.replace(broker.capabilities, push_results=False)  # type: ignore[misc]
        broker.wait_finished = sleep  # type: ignore[method-assign]
    reads = 0
    get_job = broker.get_job

    async def counted(job_id: str) -> Any:
        nonlocal reads
        reads += 1
        return await get_job(job_id)

    broker.get_job = counted  # type: ignore[method-assign]
    worker = Worker(runner, poll_s=0.05)
    running = asyncio.create_task(worker.run())
    rng = random.Random(7)
    latencies: list[float] = []
    try:
        for _ in range(jobs):
            job = await producer.enqueue_async("nap", rng.uniform(0.02, 0.2))
            await job.result_async(timeout=30)
            returned = time.time()
            info = await get_job(job.id)
            assert info is not None and info.finished_at is not None
            latencies.append((returned - info.finished_at) * 1000)
    finally:
        worker.stop()
        await running
        await producer.aclose()
        await runner.aclose()
    latencies.sort()
    return {
        "p50": statistics.median(latencies),
        "p99": latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))],
        "reads": reads / jobs,
    }


def cleanup(name: str, tag: str) -> None:
    """Drop what a run left on the shared servers (SQLite's file goes with its dir)."""
    if name == "postgres":
        import psycopg

        with psycopg.connect("postgresql://postgres@127.0.0.1:5432/test", autocommit=True) as c:
            c.execute(f"DROP SCHEMA IF EXISTS bench_result_{tag} CASCADE")
    elif name == "redis":
        import redis

        client = redis.Redis.from_url("redis://127.0.0.1:6379/13")
        for key in client.scan_iter(match=f"bench-result-{tag}:*", count=1000):
            client.delete(key)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=100)
    parser.add_argument("--brokers", default="sqlite,postgres,redis")
    args = parser.parse_args()
    print("| broker | Job.result() waits by | end → return p50 ms | p99 ms | reads per result |")
    print("|---|---|---:|---:|---:|")
    for name in args.brokers.split(","):
        for mode in ("push", "re-read"):
            tag = uuid.uuid4().hex[:8]
            with tempfile.TemporaryDirectory() as tmp:
                try:
                    row = asyncio.run(
                        run(URLS[name].format(tmp=Path(tmp), tag=tag), args.jobs, mode)
                    )
                finally:
                    cleanup(name, tag)
            label = "wait_finished" if mode == "push" else "re-read, 5→250 ms backoff"
            print(
                f"| {name} | {label} | {row['p50']:.2f} | {row['p99']:.2f} | {row['reads']:.1f} |"
            )


if __name__ == "__main__":
    main()
