"""What the PostgreSQL count trigger adds to one UPDATE of offload_jobs: its functions
as migration 0009 made them (a query built as text and planned at every call), as 0010
makes them (static, planned once per session), and no trigger; alternated in rounds.

    python benchmarks/pg_count_triggers.py [--rounds 5] [--statements 400]

Two statements, each run `--statements` times per round on a fresh session: an UPDATE
that moves no row (what an extend, or most steps of a reserve, cost the trigger) and
one that moves 100 jobs between two states (an ack batch). Uses a schema of its own
(`bench_micro_*`) in the local `test` database, dropped at the end. A benchmark, not a
test.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
import uuid

import psycopg

from offload.brokers.postgres._sql import MIGRATIONS

DSN = "postgresql://postgres@127.0.0.1:5432/test"
VARIANTS = ("0009", "0010", "none")
EMPTY = "UPDATE offload_jobs SET lease_deadline = 1 WHERE seq = -1"
MOVE = (
    "UPDATE offload_jobs SET state = CASE WHEN state = 'queued' THEN 'running'"
    " ELSE 'queued' END WHERE seq BETWEEN %s AND %s"
)
TRIGGER = (
    "CREATE TRIGGER offload_count_update AFTER UPDATE ON offload_jobs"
    " REFERENCING OLD TABLE AS offload_old NEW TABLE AS offload_new"
    " FOR EACH STATEMENT EXECUTE FUNCTION offload_count_updated()"
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--statements", type=int, default=400)
    args = parser.parse_args()
    schema = f"bench_micro_{uuid.uuid4().hex[:8]}"
    options = f"-csearch_path={schema}"
    m9 = next(m.sql for m in MIGRATIONS if m.version == 9)
    functions_0009 = m9[m9.index("CREATE FUNCTION") : m9.index("CREATE TRIGGER")]
    functions_0009 = functions_0009.replace("CREATE FUNCTION", "CREATE OR REPLACE FUNCTION")
    functions_0010 = next(m.sql for m in MIGRATIONS if m.version == 10)
    conn = psycopg.connect(DSN, autocommit=True, options=options)
    conn.execute(f"CREATE SCHEMA {schema}")

    def install(variant: str) -> None:
        conn.execute("DROP TRIGGER IF EXISTS offload_count_update ON offload_jobs")
        if variant == "none":
            return
        for name in ("inserted", "deleted", "updated"):
            conn.execute(f"ALTER FUNCTION offload_count_{name}() RESET ALL")
        conn.execute(functions_0009 if variant == "0009" else functions_0010)
        conn.execute(TRIGGER)

    def run(variant: str) -> tuple[float, float]:
        install(variant)
        n = args.statements
        with psycopg.connect(DSN, autocommit=True, options=options) as session:
            t0 = time.perf_counter()
            for _ in range(n):
                session.execute(EMPTY)
            t1 = time.perf_counter()
            for i in range(n):
                low = (i % 10) * 100 + 1
                session.execute(MOVE, (low, low + 99))
            t2 = time.perf_counter()
        return (t1 - t0) / n * 1e6, (t2 - t1) / n * 1e6

    try:
        for migration in MIGRATIONS:
            conn.execute(migration.sql)
        conn.execute(
            "INSERT INTO offload_jobs (id, queue, task, state, created_at, due_at, payload)"
            " SELECT 'j' || g, 'default', 't', 'queued', 1, 1, '{}'::bytea"
            " FROM generate_series(1, 1000) AS g"
        )
        results: dict[str, list[tuple[float, float]]] = {v: [] for v in VARIANTS}
        for round_ in range(args.rounds):
            for variant in VARIANTS if round_ % 2 == 0 else VARIANTS[::-1]:
                results[variant].append(run(variant))
            last = {v: tuple(round(x) for x in results[v][-1]) for v in VARIANTS}
            print(f"round {round_ + 1}: {last}, load {os.getloadavg()[0]:.2f}", flush=True)
        print("\n| trigger | 0-row UPDATE us | 100-row move us |\n|---|---:|---:|")
        for variant, runs in results.items():
            empty = statistics.median(r[0] for r in runs)
            move = statistics.median(r[1] for r in runs)
            print(f"| {variant} | {empty:,.0f} | {move:,.0f} |")
    finally:
        conn.execute(f"DROP SCHEMA {schema} CASCADE")
        conn.close()


if __name__ == "__main__":
    main()
