"""The Redis server's time per job in offload's scripts, on a private server.

    python benchmarks/redis_script_cost.py [--jobs 20000] [--runs 3] [--style def|async]
        [--redis-server redis-server]

Starts its own `redis-server` on a free port (`--save "" --appendonly no`, killed at
the end) so that no other client's commands land in its `INFO commandstats`; enqueues
`--jobs` jobs, then drains them with an in-process `Worker` (`--style def`: a plain
`def` handler on 8 threads, `--prefetch 100`, as the `offload-redis-def` row of
`run.sh`; `async`: an `async def` handler, `--concurrency 100 --prefetch 100`). Prints,
per run and as medians, the server's µs per job of each script (`evalsha` by SHA,
from `INFO commandstats` and `SCRIPT`-keyed `commandstats` deltas over the drain
only), the commands the scripts issue per job, and the server's CPU
(`used_cpu_sys + used_cpu_user`) per job. Why: the server shares this machine's cores
with the worker, so its time per job is part of the throughput of one worker process.
A benchmark, not a test.
"""

from __future__ import annotations

import argparse
import shutil
import socket
import statistics
import subprocess
import tempfile
import time
from typing import Any

import redis

from offload import Offload, Worker


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_server(binary: str, port: int, workdir: str) -> subprocess.Popen[bytes]:
    proc = subprocess.Popen(
        [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly",
         "no", "--dir", workdir, "--daemonize", "no", "--loglevel", "warning"],
        stdout=subprocess.DEVNULL,
    )  # fmt: skip
    client = redis.Redis(port=port)
    for _ in range(100):
        try:
            client.ping()
            return proc
        except redis.ConnectionError:
            time.sleep(0.05)
    proc.kill()
    raise SystemExit("redis-server did not start")


def snapshot(client: redis.Redis) -> tuple[dict[str, dict[str, float]], float]:
    stats: dict[str, Any] = client.info("commandstats")
    cpu: dict[str, Any] = client.info("cpu")
    calls = {
        name.removeprefix("cmdstat_"): {"calls": float(v["calls"]), "usec": float(v["usec"])}
        for name, v in stats.items()
    }
    return calls, float(cpu["used_cpu_sys"]) + float(cpu["used_cpu_user"])


def one_run(port: int, n: int, style: str) -> dict[str, float]:
    client = redis.Redis(port=port)
    client.flushall()
    client.config_resetstat()
    app = Offload(f"redis://127.0.0.1:{port}/0")
    done = [0]
    if style == "def":

        @app.task(name="noop")
        def noop() -> None:
            done[0] += 1

        settings: dict[str, Any] = {"concurrency": 8, "prefetch": 100}
    else:

        @app.task(name="noop")
        async def noop() -> None:
            done[0] += 1

        settings = {"concurrency": 100, "prefetch": 100}
    for start in range(0, n, 1000):
        noop.enqueue_many([()] * min(1000, n - start))
    before, cpu0 = snapshot(client)

    async def drain() -> float:
        worker = Worker(app, **settings)
        started = time.perf_counter()
        await worker.drain()
        return time.perf_counter() - started

    elapsed = app.portal.run(drain())
    after, cpu1 = snapshot(client)
    app.close()
    assert done[0] == n, done
    row: dict[str, float] = {"jobs/s": n / elapsed, "server cpu µs/job": (cpu1 - cpu0) / n * 1e6}
    for name, v in after.items():
        calls = v["calls"] - before.get(name, {}).get("calls", 0.0)
        usec = v["usec"] - before.get(name, {}).get("usec", 0.0)
        if calls > 0:
            row[f"{name} calls/job"] = calls / n
            row[f"{name} µs/job"] = usec / n
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", type=int, default=20_000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--style", choices=("def", "async"), default="def")
    parser.add_argument("--redis-server", default=shutil.which("redis-server") or "redis-server")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        port = free_port()
        proc = start_server(args.redis_server, port, tmp)
        try:
            rows = []
            for i in range(args.runs):
                row = one_run(port, args.jobs, args.style)
                rows.append(row)
                print(
                    f"run {i + 1}: {row['jobs/s']:,.0f} jobs/s, server CPU "
                    f"{row['server cpu µs/job']:.1f} µs/job, evalsha "
                    f"{row.get('evalsha µs/job', 0.0):.1f} µs/job",
                    flush=True,
                )
        finally:
            proc.kill()
            proc.wait()
    names = sorted({k for row in rows for k in row}, key=lambda k: (k.endswith("calls/job"), k))
    print(f"\nmedians of {args.runs} runs, {args.jobs} jobs, style {args.style}:")
    for name in names:
        values = [row.get(name, 0.0) for row in rows]
        print(f"  {name:32} {statistics.median(values):10.2f}")


if __name__ == "__main__":
    main()
