"""One-call enqueue on Redis against a raw redis-py `LPUSH`, interleaved in one process.

    benchmarks/.venv/bin/python benchmarks/enqueue_pair.py [--blocks 40] [--calls 250]

On a shared machine, whole-run rates swing 2x from one minute to the next (see
benchmarks/README.md, "Issue 16 item 4: the inbox"); here the two loops alternate in
blocks of `--calls` calls, so each pair of blocks sees the same machine, and the report
is the median of the per-pair ratios. It prints, per call: wall µs and client CPU µs
(process time) of a sync `task.enqueue(0.0)` (offload, with its default options, on a
queue whose worker has never run) and of `client.lpush(queue, json)` (redis-py with
hiredis, what benchmarks/adapters/raw.py does), and Redis's own µs per call of
EVALSHA and LPUSH from `INFO commandstats`. Uses Redis DB 7 (`BENCH_REDIS_URL`), on
keys of its own prefix, deleted at the end. Whichever offload is importable is
measured (use `PYTHONPATH=<tree>/src` for another tree).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
import uuid

import redis

from offload import Offload


def commandstats(client: redis.Redis) -> dict[str, tuple[int, float]]:
    stats = client.info("commandstats")
    return {
        name: (int(s["calls"]), float(s["usec"]))
        for name, s in ((n.removeprefix("cmdstat_"), v) for n, v in stats.items())
        if name in ("evalsha", "lpush")
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--blocks", type=int, default=40)
    parser.add_argument("--calls", type=int, default=250)
    args = parser.parse_args()
    url = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/7")
    prefix = f"pair-{uuid.uuid4().hex[:8]}"
    app = Offload(f"{url}?prefix={prefix}")

    @app.task(name="noop")
    def noop(t: float) -> None:
        pass

    client = redis.Redis.from_url(url)
    raw_key = f"{prefix}:raw"
    noop.enqueue(0.0)  # records the queue: later calls take the sync path
    for _ in range(200):  # warm-up of both
        noop.enqueue(0.0)
        client.lpush(raw_key, json.dumps({"t": 0.0}))
    rows: dict[str, list[tuple[float, float]]] = {"offload": [], "lpush": []}
    server = {"offload": [0, 0.0], "lpush": [0, 0.0]}
    for _ in range(args.blocks):
        for name in ("offload", "lpush"):
            before = commandstats(client)
            wall, cpu = time.perf_counter(), time.process_time()
            if name == "offload":
                for _ in range(args.calls):
                    noop.enqueue(0.0)
            else:
                for _ in range(args.calls):
                    client.lpush(raw_key, json.dumps({"t": 0.0}))
            wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
            after = commandstats(client)
            rows[name].append((wall / args.calls * 1e6, cpu / args.calls * 1e6))
            command = "evalsha" if name == "offload" else "lpush"
            calls = after[command][0] - before.get(command, (0, 0.0))[0]
            usec = after[command][1] - before.get(command, (0, 0.0))[1]
            server[name][0] += calls
            server[name][1] += usec
    ratios = [lp[0] / off[0] for off, lp in zip(rows["offload"], rows["lpush"], strict=True)]
    for name in ("offload", "lpush"):
        walls = [w for w, _ in rows[name]]
        cpus = [c for _, c in rows[name]]
        calls, usec = server[name]
        print(
            f"{name:8s} wall {statistics.median(walls):6.1f} µs/call  client CPU "
            f"{statistics.median(cpus):6.1f} µs/call  Redis {usec / max(calls, 1):5.2f} µs/call"
        )
    print(
        f"offload / raw LPUSH (rate): median {statistics.median(ratios):.2f}x "
        f"(quartiles {statistics.quantiles(ratios, n=4)[0]:.2f}-"
        f"{statistics.quantiles(ratios, n=4)[2]:.2f}), load {os.getloadavg()[0]:.2f}"
    )
    app.close()
    for key in client.scan_iter(f"{prefix}:*"):
        client.delete(key)
    client.close()


if __name__ == "__main__":
    main()
