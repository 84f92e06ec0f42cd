"""Does every dashboard page answer in under 200 ms with a million jobs stored?

    python benchmarks/dashboard_pages.py [--brokers sqlite,postgres,redis] [--jobs 1000000]
        [--runs 5] [--pg postgresql://postgres@127.0.0.1:5432/test]
        [--redis redis://127.0.0.1:6379/0]

For each broker: bulk-enqueue `--jobs` jobs through `Broker.enqueue` (batches of 5,000,
four queues, three tasks, one in ten delayed, one in a hundred with a key, created one
millisecond apart, so that a one-second range in the middle holds a thousand of a
million jobs and half of them were enqueued after it), then
reserve a few thousand and ack, bury, retry or keep running them, so every state is
present; register a worker. Then request every page of the dashboard `--runs` times
through its ASGI app in this process (httpx's ASGI transport: routing, broker calls,
template rendering; no socket) and print a Markdown table of median and worst ms per
page. Works in a namespace of its own (a temp SQLite file, a PostgreSQL schema, a Redis
key prefix), removed at the end. A benchmark, not a test.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import statistics
import tempfile
import time
import uuid
from pathlib import Path

import httpx

from offload import Every, Offload
from offload.codec import encode_envelope
from offload.dashboard import create_app
from offload.envelope import Envelope, ErrorInfo, new_job_id

QUEUES = ("emails", "reports", "media", "default")
TASKS = ("emails.send", "reports.build", "media.resize")
BATCH = 5000
TOKEN = "bench-token"


def envelopes(n: int, start: int, now: float) -> list[tuple[Envelope, bytes]]:
    items = []
    for i in range(start, start + n):
        env = Envelope(
            id=new_job_id(),
            task=TASKS[i % len(TASKS)],
            queue=QUEUES[i % len(QUEUES)],
            args=[f"user{i}@example.com", i],
            key=f"bench:{i}" if i % 100 == 0 else None,
            not_before=now + 86400 if i % 10 == 0 else None,
            created_at=now + i / 1000,
        )
        items.append((env, encode_envelope(env)))
    return items


async def load(app: Offload, jobs: int) -> tuple[str, float]:
    """Fill the broker; returns a key that exists (for the key filter), and the middle
    of the creation times (for the narrow time range)."""
    broker = await app.connected_broker()
    now = time.time()
    began = time.perf_counter()
    for start in range(0, jobs, BATCH):
        await broker.enqueue(envelopes(min(BATCH, jobs - start), start, now))
        if start and start % 100_000 == 0:
            rate = start / (time.perf_counter() - began)
            print(f"  {start:,} enqueued ({rate:,.0f} jobs/s)", flush=True)
    print(f"  {jobs:,} enqueued in {time.perf_counter() - began:.1f} s", flush=True)
    error = ErrorInfo("SMTPError", "451 try again later", "Traceback (most recent call last):\n")
    for queue in QUEUES:
        leases = await broker.reserve([queue], worker_id="bench", lease_s=3600, limit=1000)
        for n, lease in enumerate(leases):
            if n % 4 == 0:
                await broker.ack(lease, b'{"sent":true}', result_ttl_s=86400)
            elif n % 4 == 1:
                await broker.bury(lease, error=error)
            elif n % 4 == 2:
                await broker.retry(lease, at=time.time() + 3600, error=error)
    return "bench:500", now + jobs / 2000


async def time_pages(
    app: Offload, key: str, middle: float, runs: int
) -> list[tuple[str, list[float]]]:
    broker = await app.connected_broker()
    web = create_app(app, token=TOKEN)
    headers = {"Authorization": f"Bearer {TOKEN}"}
    transport = httpx.ASGITransport(app=web)
    async with httpx.AsyncClient(transport=transport, base_url="http://bench") as client:
        first = await broker.list_jobs(limit=50)
        dead = await broker.list_jobs(state="dead", limit=1)  # type: ignore[arg-type]
        pages = [
            ("overview", "/"),
            ("jobs (all, newest)", "/jobs"),
            ("jobs, page 2 (cursor)", f"/jobs?cursor={first.cursor}"),
            ("jobs by queue", "/jobs?queue=emails"),
            ("jobs by queue and state", "/jobs?queue=reports&state=queued"),
            ("jobs by state (dead)", "/jobs?state=dead"),
            ("jobs by state (running)", "/jobs?state=running"),
            ("jobs by task", "/jobs?task=media.resize"),
            ("jobs by time range", "/jobs?since=2000-01-01T00:00&until=2100-01-01"),
            ("jobs by time range (1 s, mid-way)", f"/jobs?since={middle}&until={middle + 1}"),
            ("jobs by key", f"/jobs?key={key}"),
            ("one job", f"/jobs/{first.items[0].id}"),
            ("one dead job", f"/jobs/{dead.items[0].id}"),
            ("dead letters", "/dead"),
            ("dead letters by queue", "/dead?queue=media"),
            ("schedules", "/schedules"),
            ("workers", "/workers"),
        ]
        results = []
        for label, path in pages:
            took = []
            for _ in range(runs):
                began = time.perf_counter()
                response = await client.get(path, headers=headers)
                took.append(time.perf_counter() - began)
                assert response.status_code == 200, (path, response.status_code)
            results.append((label, took))
    return results


async def register_worker(app: Offload) -> None:
    from offload.brokers.records import WorkerInfo

    broker = await app.connected_broker()
    info = WorkerInfo("bench-worker", "bench-host", 1, list(QUEUES), 20, time.time(),
                      last_seen=time.time(), running=250)  # fmt: skip
    await broker.register_worker(info, ttl_s=3600)


async def run_one(name: str, url: str, jobs: int, runs: int) -> list[tuple[str, list[float]]]:
    app = Offload(url)
    app.schedule("emails.send", Every(3600), id="hourly-digest")
    print(f"{name}: loading {jobs:,} jobs", flush=True)
    try:
        key, middle = await load(app, jobs)
        await register_worker(app)
        counts = await (await app.connected_broker()).counts()
        stored = sum(sum(s.states.values()) for s in counts.values())
        print(f"  stored: {stored:,} jobs", flush=True)
        return await time_pages(app, key, middle, runs)
    finally:
        await app.aclose()


def cleanup_postgres(dsn: str, schema: str) -> None:
    import psycopg
    from psycopg import sql

    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(schema)))


def cleanup_redis(url: str, prefix: str) -> None:
    import redis

    client = redis.Redis.from_url(url)
    batch = []
    for key in client.scan_iter(match=f"{prefix}*", count=10_000):
        batch.append(key)
        if len(batch) >= 10_000:
            client.unlink(*batch)
            batch = []
    if batch:
        client.unlink(*batch)
    client.close()


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--brokers", default="sqlite,postgres,redis")
    parser.add_argument("--jobs", type=int, default=1_000_000)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--pg", default="postgresql://postgres@127.0.0.1:5432/test")
    parser.add_argument("--redis", default="redis://127.0.0.1:6379/0")
    args = parser.parse_args()
    table: dict[str, dict[str, list[float]]] = {}
    tag = uuid.uuid4().hex[:8]
    for name in args.brokers.split(","):
        if name == "sqlite":
            workdir = Path(tempfile.mkdtemp(prefix="offload-dash-bench-"))
            result = await run_one(name, f"sqlite:///{workdir / 'o.db'}", args.jobs, args.runs)
            for f in workdir.iterdir():
                f.unlink()
            workdir.rmdir()
        elif name == "postgres":
            schema = f"offload_dash_bench_{tag}"
            try:
                result = await run_one(name, f"{args.pg}?schema={schema}", args.jobs, args.runs)
            finally:
                cleanup_postgres(args.pg, schema)
        elif name == "redis":
            prefix = f"offload_dash_bench_{tag}"
            sep = "&" if "?" in args.redis else "?"
            try:
                result = await run_one(
                    name, f"{args.redis}{sep}prefix={prefix}", args.jobs, args.runs
                )
            finally:
                cleanup_redis(args.redis, prefix)
        else:
            raise SystemExit(f"unknown broker {name!r}: sqlite, postgres or redis")
        table[name] = dict(result)
    names = list(table)
    print(f"\n{args.jobs:,} jobs stored; median / worst of {args.runs} requests, ms\n")
    print("| page | " + " | ".join(names) + " |")
    print("|---|" + "---:|" * len(names))
    for label in table[names[0]]:
        cells = []
        for n in names:
            ms = [t * 1000 for t in table[n][label]]
            cells.append(f"{statistics.median(ms):.1f} / {max(ms):.1f}")
        print(f"| {label} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    random.seed(1)
    asyncio.run(main())
