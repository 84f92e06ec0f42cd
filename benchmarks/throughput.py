"""Throughput and latency of offload on the embedded brokers; prints a Markdown table.

    python benchmarks/throughput.py [--jobs 20000] [--runs 3] [--brokers sqlite,memory]
        [--pg postgresql://postgres@127.0.0.1:5432/test] [--redis redis://127.0.0.1:6379/0]

Brokers: memory, sqlite (a temp file), postgres (a schema of its own per app, dropped
after), redis (a key prefix of its own per app, deleted after). Every row counts the
jobs that ran and reports the median of `--runs` runs. A benchmark, not a test: it is
never part of the default test run.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path

from offload import Offload, Worker, current_job

#: Where the postgres and redis brokers live (`--pg`, `--redis`).
SERVERS = {
    "postgres": "postgresql://postgres@127.0.0.1:5432/test",
    "redis": "redis://127.0.0.1:6379/0",
}
#: What each app made here left in a server, removed by `cleanup` when it closes.
_SPACES: list[tuple[str, str]] = []


def make_app(broker: str, workdir: Path) -> Offload:
    if broker == "memory":
        return Offload("memory://")
    if broker == "sqlite":
        return Offload(f"sqlite:///{workdir / 'bench.db'}")
    space = f"offload_tp_{uuid.uuid4().hex[:10]}"
    _SPACES.append((broker, space))
    if broker == "postgres":
        return Offload(f"{SERVERS['postgres']}?schema={space}")
    if broker == "redis":
        url = SERVERS["redis"]
        return Offload(f"{url}{'&' if '?' in url else '?'}prefix={space}")
    raise SystemExit(f"unknown broker {broker!r}: memory, sqlite, postgres or redis")


def cleanup() -> None:
    """Drop the schemas and keys the apps of this process made."""
    while _SPACES:
        broker, space = _SPACES.pop()
        if broker == "postgres":
            import psycopg

            with psycopg.connect(SERVERS["postgres"], autocommit=True) as conn:
                conn.execute(f'DROP SCHEMA IF EXISTS "{space}" CASCADE')
        else:
            import redis

            with redis.Redis.from_url(SERVERS["redis"]) as client:
                keys = list(client.scan_iter(match=f"{space}:*", count=10_000))
                for i in range(0, len(keys), 10_000):
                    client.unlink(*keys[i : i + 10_000])


def bench_enqueue_single(broker: str, n: int) -> dict[str, float]:
    with tempfile.TemporaryDirectory() as tmp:
        app = make_app(broker, Path(tmp))
        noop = app.task(name="noop")(lambda: None)
        noop.enqueue()  # connect outside the timing
        latencies = []
        started = time.perf_counter()
        for _ in range(n):
            t0 = time.perf_counter()
            noop.enqueue()
            latencies.append(time.perf_counter() - t0)
        elapsed = time.perf_counter() - started
        count = app.portal.run(app.broker.counts())["default"].states
        app.close()
    assert sum(count.values()) == n + 1, count
    latencies.sort()
    return {
        "jobs/s": n / elapsed,
        "p50 ms": latencies[len(latencies) // 2] * 1000,
        "p99 ms": latencies[int(len(latencies) * 0.99)] * 1000,
    }


def bench_enqueue_bulk(broker: str, n: int) -> dict[str, float]:
    with tempfile.TemporaryDirectory() as tmp:
        app = make_app(broker, Path(tmp))
        noop = app.task(name="noop")(lambda: None)
        noop.enqueue()
        started = time.perf_counter()
        for start in range(0, n, 1000):
            noop.enqueue_many([()] * min(1000, n - start))
        elapsed = time.perf_counter() - started
        count = app.portal.run(app.broker.counts())["default"].states
        app.close()
    assert sum(count.values()) == n + 1, count
    return {"jobs/s": n / elapsed}


def bench_process(
    broker: str, n: int, setup: Callable[[Offload], Callable[[], None]] | None = None
) -> dict[str, float]:
    """Processing of `n` no-op jobs; `setup(app)`, called once they are enqueued, may
    add hooks (benchmarks/observability.py) and returns their teardown."""
    with tempfile.TemporaryDirectory() as tmp:
        app = make_app(broker, Path(tmp))
        done = [0]

        @app.task(name="noop")
        async def noop() -> None:
            done[0] += 1

        for start in range(0, n, 1000):
            noop.enqueue_many([()] * min(1000, n - start))
        teardown = setup(app) if setup is not None else None

        async def run() -> tuple[float, float]:
            worker = Worker(app, concurrency=100, prefetch=100)
            started, cpu = time.perf_counter(), time.process_time()
            await worker.drain()
            return time.perf_counter() - started, time.process_time() - cpu

        elapsed, cpu_s = app.portal.run(run())
        if teardown is not None:
            teardown()
        app.close()
    assert done[0] == n, done
    # CPU time (every thread of the process) per job: steadier than jobs/s on a busy host.
    return {"jobs/s": n / elapsed, "cpu us/job": cpu_s / n * 1e6}


def bench_latency(broker: str, n: int) -> dict[str, float]:
    """Enqueue → start with an idle worker, one job at a time."""
    with tempfile.TemporaryDirectory() as tmp:
        app = make_app(broker, Path(tmp))
        delays: list[float] = []

        @app.task(name="probe")
        async def probe() -> None:
            delays.append(time.time() - current_job().created_at)

        async def run() -> None:
            worker = Worker(app, concurrency=10, poll_s=1.0)
            runner = asyncio.create_task(worker.run())
            await asyncio.sleep(0.2)
            for _ in range(n):
                await probe.enqueue_async()
                await asyncio.sleep(0.01)
            while len(delays) < n:
                await asyncio.sleep(0.01)
            worker.stop()
            await runner

        app.portal.run(run())
        app.close()
    delays.sort()
    return {
        "p50 ms": delays[len(delays) // 2] * 1000,
        "p99 ms": delays[int(len(delays) * 0.99)] * 1000,
    }


def median_of(
    runs: int, fn: Callable[[str, int], dict[str, float]], broker: str, n: int
) -> dict[str, float]:
    results = []
    for _ in range(runs):
        try:
            results.append(fn(broker, n))
        finally:
            cleanup()
    return {k: statistics.median(r[k] for r in results) for k in results[0]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--jobs", type=int, default=20_000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--brokers", default="sqlite,memory")
    parser.add_argument("--pg", default=SERVERS["postgres"])
    parser.add_argument("--redis", default=SERVERS["redis"])
    args = parser.parse_args()
    SERVERS.update(postgres=args.pg, redis=args.redis)
    rows = []
    for broker in args.brokers.split(","):
        single = median_of(args.runs, bench_enqueue_single, broker, args.jobs // 4)
        bulk = median_of(args.runs, bench_enqueue_bulk, broker, args.jobs)
        process = median_of(args.runs, bench_process, broker, args.jobs)
        latency = median_of(args.runs, bench_latency, broker, 200)
        rows.append(
            f"| offload {broker} | {single['jobs/s']:,.0f} | {single['p50 ms']:.3f} | "
            f"{bulk['jobs/s']:,.0f} | {process['jobs/s']:,.0f} | "
            f"{latency['p50 ms']:.2f} | {latency['p99 ms']:.2f} |"
        )
    print(
        f"\n{args.jobs:,} no-op jobs (single enqueue: {args.jobs // 4:,}), "
        f"median of {args.runs} runs, 1 worker process\n"
    )
    print(
        "| broker | enqueue jobs/s (one call each) | enqueue p50 ms | enqueue jobs/s (bulk) "
        "| process jobs/s | enqueue→start p50 ms | p99 ms |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|")
    for row in rows:
        print(row)


if __name__ == "__main__":
    main()
