"""The Redis time of a one-call enqueue that hands its job to a parked worker (issue 16,
item 5), paced as the latency phase paces it.

    benchmarks/.venv/bin/python benchmarks/handoff_cost.py [--url redis://127.0.0.1:6379/13]
        [--jobs 500] [--rate 500] [--rounds 2]

Before each sync `task.enqueue()` a parking ticket is put in the queue's `parked` zset by
hand (a worker that never reads its channel), so every call takes the handoff: lent in
`enqueue_one.lua`'s plain case where the tree has it, else the full path. Prints, per
round, the producer's `enqueue()` p50 and Redis's own µs per EVALSHA (`INFO
commandstats` deltas: use a Redis nobody else calls meanwhile), then the same for plain
enqueues with no worker parked. Flushes the URL's database first. Whichever offload is
importable is measured (`PYTHONPATH=<tree>/src` for another tree).
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

import msgspec
import redis

from offload import Offload


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", default="redis://127.0.0.1:6379/13")
    parser.add_argument("--jobs", type=int, default=500)
    parser.add_argument("--rate", type=float, default=500.0)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    client = redis.Redis.from_url(args.url)
    client.flushdb()
    app = Offload(args.url)

    @app.task(name="t")
    def t(i: int, t0: float) -> None: ...

    t.enqueue(0, 0.0)  # the queue is known: the sync path from here on
    base = next(k.decode() for k in client.scan_iter("*payload"))[: -len("payload")]

    def evalsha() -> tuple[int, int]:
        stats = client.info("commandstats").get("cmdstat_evalsha", {})
        return int(stats.get("calls", 0)), int(stats.get("usec", 0))

    def paced(before: Callable[[int], None] | None) -> tuple[float, float]:
        calls0, usec0 = evalsha()
        took: list[float] = []
        next_at = time.perf_counter()
        for i in range(args.jobs):
            next_at += 1 / args.rate
            while (left := next_at - time.perf_counter()) > 0:
                time.sleep(max(0.0, left - 0.0002))
            if before is not None:
                before(i)
            start = time.perf_counter()
            t.enqueue(i, time.time())
            took.append(time.perf_counter() - start)
        calls1, usec1 = evalsha()
        took.sort()
        return took[len(took) // 2] * 1e6, (usec1 - usec0) / max(1, calls1 - calls0)

    for n in range(args.rounds):

        def park(i: int, n: int = n) -> None:
            # a handoff needs an empty inbox and nothing ready (what a real worker's
            # reserve leaves behind); the handed jobs stay `running` (nobody acks them)
            client.delete(base + "inbox", base + "ready")
            ticket = [f"{n:02d}{i:014d}:", 1, 30.0, "handoff-cost:nobody", "nobody"]
            client.zadd(base + "parked", {msgspec.msgpack.encode(ticket): time.time() + 100})

        p50, usec = paced(park)
        print(f"round {n + 1}: handoff  enqueue() p50 {p50:6.1f} µs, Redis {usec:6.1f} µs/EVALSHA")
        client.delete(base + "parked")
        p50, usec = paced(None)
        print(f"round {n + 1}: plain    enqueue() p50 {p50:6.1f} µs, Redis {usec:6.1f} µs/EVALSHA")
    client.flushdb()
    app.close()


if __name__ == "__main__":
    main()
