"""One-call enqueue on Redis against a raw redis-py `LPUSH`, interleaved in one process.

    benchmarks/.venv/bin/python benchmarks/enqueue_pair.py [--blocks 30] [--calls 200]

On a shared machine, whole-run rates swing 2x from one minute to the next (see
benchmarks/README.md, "Issue 16 item 4: the inbox"); here the two loops alternate in
blocks of `--calls` calls, so each pair of blocks sees the same machine, and the report
is the median of the per-pair ratios. It prints, per call: wall µs and client CPU µs
(process time) of a sync `task.enqueue(0.0)` (offload, with its default options, on a
queue whose worker has never run) and of `client.lpush(queue, json)` (redis-py with
hiredis, what benchmarks/adapters/raw.py does) and, in the same rotation, of a Huey
task call (`RedisHuey`, results off, as benchmarks/adapters/huey.py), and Redis's own
µs per call of EVALSHA and LPUSH from `INFO commandstats` (the server's counters: run it
on a Redis of its own, or other clients' calls count too). Uses Redis DB 7 (`BENCH_REDIS_URL`), on
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
from collections.abc import Callable

import redis

from offload import Offload


def commandstats(client: redis.Redis) -> dict[str, tuple[int, float]]:
    stats = client.info("commandstats")
    return {
        name: (int(s["calls"]), float(s["usec"]))
        for name, s in ((n.removeprefix("cmdstat_"), v) for n, v in stats.items())
        if name in ("evalsha", "lpush")
    }


def loops(url: str, prefix: str) -> dict[str, Callable[[], None]]:
    """One call of each system, by name (each set up and warmed up)."""
    from huey import RedisHuey

    app = Offload(f"{url}?prefix={prefix}")

    @app.task(name="noop")
    def noop(t: float) -> None:
        pass

    huey = RedisHuey(prefix, url=url, results=False)

    @huey.task(name="noop")
    def huey_noop(t: float) -> None:
        pass

    client = redis.Redis.from_url(url)
    raw_key = f"{prefix}:raw"
    calls: dict[str, Callable[[], None]] = {
        "offload": lambda: noop.enqueue(0.0) and None,
        "lpush": lambda: client.lpush(raw_key, json.dumps({"t": 0.0})) and None,
        "huey": lambda: huey_noop(0.0) and None,
    }
    for _ in range(200):  # the first offload call records the queue (then the sync path)
        for call in calls.values():
            call()
    return calls


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--blocks", type=int, default=30)
    parser.add_argument("--calls", type=int, default=200)  # 6,000 jobs: under INBOX_MAX
    args = parser.parse_args()
    url = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/7")
    prefix = f"pair-{uuid.uuid4().hex[:8]}"
    client = redis.Redis.from_url(url)
    calls = loops(url, prefix)
    rows: dict[str, list[tuple[float, float]]] = {name: [] for name in calls}
    server = {name: [0, 0.0] for name in calls}
    for _ in range(args.blocks):
        for name, call in calls.items():
            before = commandstats(client)
            wall, cpu = time.perf_counter(), time.process_time()
            for _ in range(args.calls):
                call()
            wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
            after = commandstats(client)
            rows[name].append((wall / args.calls * 1e6, cpu / args.calls * 1e6))
            command = "evalsha" if name == "offload" else "lpush"  # Huey's: LPUSH too
            server[name][0] += after[command][0] - before.get(command, (0, 0.0))[0]
            server[name][1] += after[command][1] - before.get(command, (0, 0.0))[1]
    for name in calls:
        walls = [w for w, _ in rows[name]]
        cpus = [c for _, c in rows[name]]
        count, usec = server[name]
        print(
            f"{name:8s} wall {statistics.median(walls):6.1f} µs/call  client CPU "
            f"{statistics.median(cpus):6.1f} µs/call  Redis {usec / max(count, 1):5.2f} µs/call"
        )
    for peer in ("lpush", "huey"):
        ratios = [p[0] / o[0] for o, p in zip(rows["offload"], rows[peer], strict=True)]
        low, _, high = statistics.quantiles(ratios, n=4)
        print(
            f"offload / {peer} (rate): median {statistics.median(ratios):.2f}x "
            f"(quartiles {low:.2f}-{high:.2f})"
        )
    print(f"load {os.getloadavg()[0]:.2f}")
    for pattern in (f"{prefix}:*", f"huey.*{prefix.replace('-', '')}*"):
        for key in client.scan_iter(pattern):
            client.delete(key)
    client.close()


if __name__ == "__main__":
    main()
