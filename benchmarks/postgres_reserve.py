"""Does reserve on PostgreSQL cost the same with a million jobs in the table?

    python benchmarks/postgres_reserve.py [--url postgresql://postgres@127.0.0.1/test]
        [--rows 1000000] [--samples 2000]

Times `reserve(limit=1)` and `reserve(limit=10)` in three tables: empty; with `--rows`
finished jobs (what retention keeps); and with `--rows` more jobs queued in the very
queue being reserved (a backlog). Rows are bulk-inserted with SQL, as the broker writes
them. Works in a schema of its own, dropped at the end. Prints a Markdown table of
per-call latency (median and p99, in ms). A benchmark, not a test.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
import uuid

import psycopg
from psycopg import sql

from offload.brokers.postgres import PostgresBroker
from offload.codec import encode_envelope
from offload.envelope import Envelope, new_job_id

FILL = """
INSERT INTO offload_jobs (id, queue, task, state, priority, created_at, due_at,
                          finished_at, purge_at, payload)
SELECT 'fill-' || %(tag)s || '-' || g, %(queue)s, 'noop', %(state)s, 0, 1, 1,
       CASE WHEN %(state)s = 'succeeded' THEN 2 END,
       CASE WHEN %(state)s = 'succeeded' THEN 4e9 END,
       '{"id":"x","task":"noop"}'::bytea
  FROM generate_series(1, %(n)s) AS g
"""


async def time_reserve(broker: PostgresBroker, samples: int, limit: int) -> list[float]:
    """Seconds per reserve call, each taking `limit` jobs that are ready."""
    jobs = []
    for _ in range(samples * limit):
        env = Envelope(id=new_job_id(), task="noop", queue="bench", priority=1)
        jobs.append((env, encode_envelope(env)))
    for start in range(0, len(jobs), 5000):
        await broker.enqueue(jobs[start : start + 5000])
    took = []
    for _ in range(samples):
        begin = time.perf_counter()
        leases = await broker.reserve(["bench"], worker_id="bench", lease_s=600, limit=limit)
        took.append(time.perf_counter() - begin)
        assert len(leases) == limit
    return took


def fill(dsn: str, schema: str, state: str, queue: str, n: int) -> float:
    begin = time.perf_counter()
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(sql.SQL("SET search_path = {}").format(sql.Identifier(schema)))
        params = {"tag": uuid.uuid4().hex[:6], "queue": queue, "state": state, "n": n}
        conn.execute(FILL, params)  # type: ignore[arg-type]
        conn.execute("VACUUM ANALYZE offload_jobs")
    return time.perf_counter() - begin


def row(label: str, took: list[float]) -> str:
    ms = sorted(t * 1000 for t in took)
    p99 = ms[min(len(ms) - 1, int(len(ms) * 0.99))]
    return f"| {label} | {statistics.median(ms):.3f} | {p99:.3f} |"


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", default="postgresql://postgres@127.0.0.1:5432/test")
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--samples", type=int, default=2000)
    args = parser.parse_args()
    schema = f"offload_bench_{uuid.uuid4().hex[:8]}"
    broker = PostgresBroker(f"{args.url}?schema={schema}")
    await broker.connect()
    lines = ["| table | reserve median ms | p99 ms |", "|---|---|---|"]
    try:
        phases = [
            ("empty", None),
            (f"+{args.rows:,} succeeded jobs", ("succeeded", "done")),
            (f"+{args.rows:,} queued jobs in the reserved queue", ("queued", "bench")),
        ]
        for label, filler in phases:
            if filler is not None:
                spent = fill(args.url, schema, filler[0], filler[1], args.rows)
                print(f"filled {label} in {spent:.1f} s", flush=True)
            for limit in (1, 10):
                took = await time_reserve(broker, args.samples // limit, limit)
                lines.append(row(f"{label}, limit={limit}", took))
    finally:
        await broker.close()
        with psycopg.connect(args.url, autocommit=True) as conn:
            conn.execute(sql.SQL("DROP SCHEMA {} CASCADE").format(sql.Identifier(schema)))
    print("\n".join(lines))


if __name__ == "__main__":
    asyncio.run(main())
