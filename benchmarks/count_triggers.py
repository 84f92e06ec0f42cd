"""What keeping job counts costs on SQLite and PostgreSQL: the same enqueue and
processing of no-op jobs on a fresh store, with the count maintenance the code installs
("as is") and with the count triggers dropped ("no triggers"), alternated within each
round so that the host's load hits both alike.

    python benchmarks/count_triggers.py [--brokers sqlite,postgres] [--jobs 5000]
        [--runs 3] [--variants as-is,no-triggers]

Prints each run, then the medians: enqueue jobs/s (bulk, 1,000 per call), processing
jobs/s (one in-process worker, concurrency 100, prefetch 100, as
`benchmarks/throughput.py`), this process's CPU time per job, and for PostgreSQL the
CPU time of the server backends that served this run (found by their
`application_name`, read from /proc). Prints the load average at the start and after
every round: on a shared host, compare the variants of one run only.

PostgreSQL runs in a schema of its own (`bench_counts_<tag>`) in `--postgres`'s
database, dropped after each run. A benchmark, not a test.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from offload import JobState, Offload, Worker

#: The count triggers of SQLite schema 8 and PostgreSQL migration 0009.
TRIGGERS = ("offload_count_insert", "offload_count_delete", "offload_count_update")
POSTGRES = "postgresql://postgres@127.0.0.1:5432/test"
TICK_S = 1 / os.sysconf("SC_CLK_TCK")


def _cpu_of(pids: list[int]) -> float:
    """CPU seconds (user + system) the processes have used so far."""
    total = 0.0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += (int(fields[11]) + int(fields[12])) * TICK_S
    return total


@contextmanager
def _store(broker: str, dsn: str, tag: str) -> Iterator[tuple[str, Callable[[], None]]]:
    """A fresh store: its URL, and a function that drops its count triggers."""
    if broker == "sqlite":
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "bench.db"

            def drop_sqlite() -> None:
                import sqlite3

                conn = sqlite3.connect(path)
                for name in TRIGGERS:
                    conn.execute(f"DROP TRIGGER IF EXISTS {name}")
                conn.commit()
                conn.close()

            yield f"sqlite:///{path}", drop_sqlite
        return
    import psycopg

    schema = f"bench_counts_{tag}"

    def drop_postgres() -> None:
        with psycopg.connect(dsn, autocommit=True) as conn:
            for name in TRIGGERS:
                conn.execute(f"DROP TRIGGER IF EXISTS {name} ON {schema}.offload_jobs")

    try:
        yield f"{dsn}?schema={schema}", drop_postgres
    finally:
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")


def _backends(dsn: str, app_name: str) -> list[int]:
    import psycopg

    with psycopg.connect(dsn, autocommit=True) as conn:
        rows = conn.execute(
            "SELECT pid FROM pg_stat_activity WHERE application_name = %s", (app_name,)
        ).fetchall()
    return [int(r[0]) for r in rows]


def run_once(broker: str, variant: str, n: int, dsn: str) -> dict[str, float]:
    tag = uuid.uuid4().hex[:10]
    app_name = f"offload-bench-{tag}"
    os.environ["PGAPPNAME"] = app_name  # libpq: names this run's server backends
    with _store(broker, dsn, tag) as (url, drop_triggers):
        app = Offload(url)
        done = [0]

        @app.task(name="noop")
        async def noop() -> None:
            done[0] += 1

        app.portal.run(app.connected_broker())
        if variant == "no-triggers":
            drop_triggers()
        backends = _backends(dsn, app_name) if broker == "postgres" else []
        server0 = _cpu_of(backends)
        started = time.perf_counter()
        for start in range(0, n, 1000):
            noop.enqueue_many([()] * min(1000, n - start))
        enqueue_s = time.perf_counter() - started
        backends = _backends(dsn, app_name) if broker == "postgres" else []
        server1 = _cpu_of(backends)

        async def process() -> tuple[float, float]:
            worker = Worker(app, concurrency=100, prefetch=100)
            t0, cpu0 = time.perf_counter(), time.process_time()
            await worker.drain()
            return time.perf_counter() - t0, time.process_time() - cpu0

        process_s, cpu_s = app.portal.run(process())
        backends = _backends(dsn, app_name) if broker == "postgres" else []
        server2 = _cpu_of(backends)
        counts = app.portal.run(app.broker.counts())
        app.close()
    assert done[0] == n, done
    succeeded = counts["default"].states.get(JobState.SUCCEEDED, 0)
    if variant != "no-triggers":
        assert succeeded == n, counts  # the counts stayed exact
    return {
        "enqueue jobs/s": n / enqueue_s,
        "process jobs/s": n / process_s,
        "cpu us/job": cpu_s / n * 1e6,
        "server enqueue us/job": (server1 - server0) / n * 1e6,
        "server process us/job": (server2 - server1) / n * 1e6,
    }


def load() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--brokers", default="sqlite,postgres")
    parser.add_argument("--jobs", type=int, default=5000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--variants", default="as-is,no-triggers")
    parser.add_argument("--postgres", default=POSTGRES)
    args = parser.parse_args()
    variants = args.variants.split(",")
    print(f"load average at start: {load()}")
    for broker in args.brokers.split(","):
        results: dict[str, list[dict[str, float]]] = {v: [] for v in variants}
        for round_ in range(args.runs):
            order = variants if round_ % 2 == 0 else variants[::-1]
            for variant in order:
                r = run_once(broker, variant, args.jobs, args.postgres)
                results[variant].append(r)
                cells = ", ".join(f"{k} {v:,.1f}" for k, v in r.items())
                print(f"{broker} {variant} run {round_ + 1}: {cells}", flush=True)
            print(f"  load average: {load()}", flush=True)
        print(f"\n{broker}, {args.jobs:,} no-op jobs, median of {args.runs} runs")
        keys = list(next(iter(results.values()))[0])
        if broker != "postgres":
            keys = [k for k in keys if not k.startswith("server")]
        print("| variant | " + " | ".join(keys) + " |")
        print("|---|" + "---:|" * len(keys))
        for variant, runs in results.items():
            cells = " | ".join(f"{statistics.median(r[k] for r in runs):,.1f}" for k in keys)
            print(f"| {variant} | {cells} |")
        print(flush=True)
    print(f"load average at end: {load()}")


if __name__ == "__main__":
    main()
