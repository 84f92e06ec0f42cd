"""offload on PostgreSQL next to procrastinate, on the same server in the same run.

    benchmarks/.venv/bin/pip install procrastinate   # once; never a dependency of offload
    benchmarks/.venv/bin/python benchmarks/postgres_vs_procrastinate.py [--jobs 20000]
        [--runs 3] [--depth] [--phases single,sync,bulk,process,latency]
        [--systems offload,procrastinate]

Each system gets a schema of its own in the database (`bench_offload`,
`bench_procrastinate`), dropped and created again before every measurement. Rows:

- enqueue, one call per job: `enqueue_async` / `defer_async` in a loop, and from sync
  code (`enqueue()` / `defer()` inside `App.open()`, procrastinate's sync connector);
- enqueue, bulk: `enqueue_many_async` / `batch_defer_async`, 1,000 jobs per call;
- processing: `--jobs` no-op jobs enqueued first, then one worker process
  (`python -m offload worker ... --concurrency C`, `procrastinate worker --concurrency
  P`), timed from the first job's start to the last job's end as the database recorded
  them, so process start-up is not counted;
- enqueue→start latency: an idle worker, one job every 10 ms; each job records
  `time.time()` minus the time its producer stamped in its argument;
- with `--depth`: processing again with 1,000,000 finished jobs in the table.

Every row checks that all its jobs ran (or were stored) and reports the median of
`--runs` runs; each run measures every system in turn, so with `--phases single,sync`
(the one-call rows only, seconds each) the two systems alternate within a minute.
`--systems offload` leaves procrastinate out (for an A/B of offload alone: its
processing rows take minutes). A benchmark, never part of the test run.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import quote

import procrastinate
import psycopg
from psycopg import sql

from offload import Offload

HERE = Path(__file__).resolve().parent
#: The benchmark database (both systems, separate schemas).
DSN = os.environ.get("BENCH_PG_DSN", "postgresql://postgres@127.0.0.1:5432/test")
OFFLOAD_SCHEMA = "bench_offload"
PROCRASTINATE_SCHEMA = "bench_procrastinate"
#: Jobs per bulk call, for both systems.
BATCH = 1000
#: Finished jobs put in the table for `--depth`.
DEPTH = 1_000_000
#: Jobs of the latency row, and the gap between two of them (seconds).
PROBES = 200
PROBE_GAP_S = 0.01
#: Longest a processing or latency row may take, in seconds.
ROW_TIMEOUT_S = 600.0
#: Where the probe tasks append their enqueue→start delays (set by the driver).
ENV_PROBE_FILE = "BENCH_PROBE_FILE"


def offload_url(dsn: str) -> str:
    return f"{dsn}?schema={OFFLOAD_SCHEMA}"


def procrastinate_conninfo(dsn: str) -> str:
    return f"{dsn}?options={quote(f'-csearch_path={PROCRASTINATE_SCHEMA}')}"


def record_probe(sent: float) -> None:
    delay = time.time() - sent
    with open(os.environ[ENV_PROBE_FILE], "a") as f:
        f.write(f"{delay}\n")


# -- the two apps (imported by the worker processes too) --------------------------------

offload_app = Offload(offload_url(DSN))


@offload_app.task(name="noop")
async def offload_noop() -> None:
    pass


@offload_app.task(name="probe")
async def offload_probe(sent: float) -> None:
    record_probe(sent)


#: Connections per worker process for both: offload's default `pool_max`, given to
#: procrastinate's pool too (its own default would be psycopg_pool's 4).
POOL_MAX = 10

proc_app = procrastinate.App(
    connector=procrastinate.PsycopgConnector(
        conninfo=procrastinate_conninfo(DSN), max_size=POOL_MAX
    )
)


@proc_app.task(name="noop")
async def proc_noop() -> None:
    pass


@proc_app.task(name="probe")
async def proc_probe(sent: float) -> None:
    record_probe(sent)


# -- one system behind a common face ----------------------------------------------------


class System:
    name: str
    schema: str

    def __init__(self, dsn: str, concurrency: int) -> None:
        self.dsn = dsn
        self.concurrency = concurrency
        #: The highest job id (offload: `seq`) of the depth jobs, 0 without them: this
        #: run's jobs are the ones above it, counted by an index range scan. (Filtering
        #: the depth jobs out by a column read all million rows on every 0.2 s poll: a
        #: parallel scan of 110-135 ms, which took most of the 2 cores from the worker.)
        self.floor = 0

    async def open(self) -> None:
        raise NotImplementedError

    async def install(self) -> None:
        """Create the system's tables in its (empty) schema."""
        raise NotImplementedError

    async def close(self) -> None:
        raise NotImplementedError

    async def enqueue_one(self) -> None:
        raise NotImplementedError

    async def enqueue_batch(self, n: int) -> None:
        raise NotImplementedError

    def enqueue_sync(self, n: int) -> float:
        """Seconds for `n` one-call enqueues from plain synchronous code (a web view),
        after one outside the timing."""
        raise NotImplementedError

    async def probe(self) -> None:
        raise NotImplementedError

    def worker_argv(self) -> list[str]:
        raise NotImplementedError

    def floor_sql(self) -> str:
        """The highest job id in the table (0 if empty)."""
        raise NotImplementedError

    #: The tables the depth jobs fill (vacuumed once they are in).
    tables = ""

    def counts_sql(self) -> str:
        """(stored jobs, succeeded jobs) of this run (depth jobs excluded)."""
        raise NotImplementedError

    def span_sql(self) -> str:
        """Seconds from the first start to the last end of this run's jobs."""
        raise NotImplementedError

    def depth_sql(self) -> str:
        raise NotImplementedError

    def forget_run_sql(self) -> str:
        """Delete this run's jobs, keeping the depth jobs."""
        raise NotImplementedError


class OffloadSystem(System):
    name = "offload"
    schema = OFFLOAD_SCHEMA
    tables = "offload_jobs"

    async def open(self) -> None:
        await offload_app.connected_broker()

    async def install(self) -> None:
        await offload_app.connected_broker()  # migrates the empty schema

    async def close(self) -> None:
        await offload_app.aclose()

    async def enqueue_one(self) -> None:
        await offload_noop.enqueue_async()

    async def enqueue_batch(self, n: int) -> None:
        await offload_noop.enqueue_many_async([()] * n)

    def enqueue_sync(self, n: int) -> float:
        try:
            offload_noop.enqueue()
            started = time.perf_counter()
            for _ in range(n):
                offload_noop.enqueue()
            return time.perf_counter() - started
        finally:
            offload_app.close()

    async def probe(self) -> None:
        await offload_probe.enqueue_async(time.time())

    def worker_argv(self) -> list[str]:
        return [
            sys.executable, "-m", "offload", "worker",
            "postgres_vs_procrastinate:offload_app",
            "--concurrency", str(self.concurrency), "--log-level", "warning",
        ]  # fmt: skip

    def counts_sql(self) -> str:
        return (
            "SELECT count(*), count(*) FILTER (WHERE state = 'succeeded')"
            f" FROM offload_jobs WHERE seq > {self.floor}"
        )

    def floor_sql(self) -> str:
        return "SELECT coalesce(max(seq), 0) FROM offload_jobs"

    def span_sql(self) -> str:
        return (
            f"SELECT max(finished_at) - min(started_at) FROM offload_jobs WHERE seq > {self.floor}"
        )

    def depth_sql(self) -> str:
        return (
            "INSERT INTO offload_queues (name) VALUES ('default') ON CONFLICT DO NOTHING;"
            "INSERT INTO offload_jobs (id, queue, task, state, attempt, created_at, due_at,"
            " started_at, finished_at, payload, result, purge_at)"
            " SELECT 'depth-' || g, 'default', 'noop', 'succeeded', 1, e, e, e, e,"
            " '\\x7b7d'::bytea, 'null'::bytea, e + 1e9"
            f" FROM generate_series(1, {DEPTH}) AS g,"
            " extract(epoch FROM now()) AS e"
        )

    def forget_run_sql(self) -> str:
        return f"DELETE FROM offload_jobs WHERE seq > {self.floor}"


class ProcrastinateSystem(System):
    name = "procrastinate"
    schema = PROCRASTINATE_SCHEMA
    tables = "procrastinate_jobs, procrastinate_events"

    async def open(self) -> None:
        await proc_app.open_async()

    async def install(self) -> None:
        await proc_app.schema_manager.apply_schema_async()

    async def close(self) -> None:
        await proc_app.close_async()

    async def enqueue_one(self) -> None:
        await proc_noop.defer_async()

    async def enqueue_batch(self, n: int) -> None:
        await proc_noop.batch_defer_async(*([{}] * n))

    def enqueue_sync(self, n: int) -> float:
        with proc_app.open():  # procrastinate's sync path: a sync psycopg connector
            proc_noop.defer()
            started = time.perf_counter()
            for _ in range(n):
                proc_noop.defer()
            return time.perf_counter() - started

    async def probe(self) -> None:
        await proc_probe.defer_async(sent=time.time())

    def worker_argv(self) -> list[str]:
        return [
            sys.executable, "-m", "procrastinate",
            "--app", "postgres_vs_procrastinate.proc_app", "--log-level", "warning",
            "worker", "--concurrency", str(self.concurrency),
        ]  # fmt: skip

    def counts_sql(self) -> str:
        return (
            "SELECT count(*), count(*) FILTER (WHERE status = 'succeeded')"
            f" FROM procrastinate_jobs WHERE id > {self.floor}"
        )

    def floor_sql(self) -> str:
        return "SELECT coalesce(max(id), 0) FROM procrastinate_jobs"

    def span_sql(self) -> str:
        return (
            "SELECT extract(epoch FROM max(e.at) FILTER (WHERE e.type = 'succeeded')"
            " - min(e.at) FILTER (WHERE e.type = 'started'))"
            " FROM procrastinate_events AS e JOIN procrastinate_jobs AS j ON j.id = e.job_id"
            f" WHERE j.id > {self.floor}"
        )

    def depth_sql(self) -> str:
        return (
            "INSERT INTO procrastinate_jobs (queue_name, task_name, lock, args, status,"
            " attempts)"
            " SELECT 'default', 'noop', 'depth', '{}', 'succeeded', 1"
            f" FROM generate_series(1, {DEPTH})"
        )

    def forget_run_sql(self) -> str:
        return f"DELETE FROM procrastinate_jobs WHERE id > {self.floor}"


# -- the database -------------------------------------------------------------------------


def admin(dsn: str) -> psycopg.Connection[tuple[Any, ...]]:
    return psycopg.connect(dsn, autocommit=True)


def reset_schema(dsn: str, schema: str) -> None:
    with admin(dsn) as conn:
        conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(schema)))
        conn.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(schema)))


def query(dsn: str, schema: str, text: str) -> tuple[Any, ...]:
    with admin(dsn) as conn:
        conn.execute(sql.SQL("SET search_path TO {}").format(sql.Identifier(schema)))
        row = conn.execute(text.encode()).fetchone()
    assert row is not None
    return row


def execute(dsn: str, schema: str, text: str) -> None:
    with admin(dsn) as conn:
        conn.execute(sql.SQL("SET search_path TO {}").format(sql.Identifier(schema)))
        conn.execute(text.encode())
        conn.execute("ANALYZE")


def run_async(fn: Callable[[], Awaitable[float]], system: System) -> float:
    async def main() -> float:
        await system.open()
        try:
            return await fn()
        finally:
            await system.close()

    return asyncio.run(main())


# -- the rows -------------------------------------------------------------------------------


def fresh(system: System) -> None:
    """An empty schema with the system's tables."""
    reset_schema(system.dsn, system.schema)
    system.floor = 0

    async def install() -> float:
        await system.install()
        return 0.0

    run_async(install, system)


def stored(system: System) -> tuple[int, int]:
    total, succeeded = query(system.dsn, system.schema, system.counts_sql())
    return int(total), int(succeeded)


def enqueue_single(system: System, n: int) -> float:
    fresh(system)

    async def go() -> float:
        await system.enqueue_one()  # warm the pool outside the timing
        started = time.perf_counter()
        for _ in range(n):
            await system.enqueue_one()
        return time.perf_counter() - started

    elapsed = run_async(go, system)
    assert stored(system)[0] == n + 1, (system.name, stored(system), n + 1)
    return n / elapsed


def enqueue_single_sync(system: System, n: int) -> float:
    fresh(system)
    elapsed = system.enqueue_sync(n)
    assert stored(system)[0] == n + 1, (system.name, stored(system), n + 1)
    return n / elapsed


def enqueue_bulk(system: System, n: int, *, clean: bool = True) -> float:
    if clean:
        fresh(system)

    async def go() -> float:
        started = time.perf_counter()
        for start in range(0, n, BATCH):
            await system.enqueue_batch(min(BATCH, n - start))
        return time.perf_counter() - started

    elapsed = run_async(go, system)
    assert stored(system)[0] == n, (system.name, stored(system), n)
    return n / elapsed


@contextmanager
def worker(
    system: System, log: Path, probe_file: Path | None = None
) -> Iterator[subprocess.Popen[bytes]]:
    env = {**os.environ, "PYTHONPATH": str(HERE), "BENCH_PG_DSN": system.dsn}
    if probe_file is not None:
        env[ENV_PROBE_FILE] = str(probe_file)
    with log.open("ab") as out:
        proc = subprocess.Popen(
            system.worker_argv(), env=env, cwd=HERE, stdout=out, stderr=subprocess.STDOUT
        )
        try:
            yield proc
        finally:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def process(system: System, n: int, log: Path, *, depth: bool = False) -> float:
    """Jobs per second of one worker process over `n` queued no-op jobs."""
    if depth:
        execute(system.dsn, system.schema, system.forget_run_sql())
        enqueue_bulk(system, n, clean=False)
    else:
        enqueue_bulk(system, n)
    deadline = time.monotonic() + ROW_TIMEOUT_S
    with worker(system, log) as proc:
        while stored(system)[1] < n:
            if proc.poll() is not None:
                raise RuntimeError(f"{system.name}: the worker exited; see {log}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"{system.name}: {stored(system)} of {n} after the timeout")
            time.sleep(0.2)
    assert stored(system) == (n, n), (system.name, stored(system), n)
    (span,) = query(system.dsn, system.schema, system.span_sql())
    return n / float(span)


def latency(system: System, log: Path) -> tuple[float, float]:
    """p50 and p99 enqueue→start, in ms, with an idle worker."""
    fresh(system)
    with tempfile.TemporaryDirectory() as tmp:
        probes = Path(tmp) / "probes"
        probes.touch()

        def seen() -> list[float]:
            return [float(line) for line in probes.read_text().split()]

        async def go() -> float:
            await system.probe()  # the worker is up and idle once this one ran
            while not seen():
                await asyncio.sleep(0.05)
            await asyncio.sleep(0.5)
            for _ in range(PROBES):
                await system.probe()
                await asyncio.sleep(PROBE_GAP_S)
            deadline = time.monotonic() + ROW_TIMEOUT_S
            while len(seen()) < PROBES + 1 and time.monotonic() < deadline:
                await asyncio.sleep(0.05)
            return 0.0

        with worker(system, log, probes):
            run_async(go, system)
        delays = sorted(seen()[1:])
    assert len(delays) == PROBES, (system.name, len(delays))
    return percentile(delays, 50) * 1000, percentile(delays, 99) * 1000


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[max(int(len(ordered) * p / 100 + 0.5) - 1, 0)]


# -- the run --------------------------------------------------------------------------------


#: `--phases`: each phase and the rows it fills.
PHASES = {
    "single": ("enqueue one",),
    "sync": ("enqueue one sync",),
    "bulk": ("enqueue bulk",),
    "process": ("process",),
    "latency": ("p50 ms", "p99 ms"),
}


def measure(system: System, args: argparse.Namespace, log: Path) -> dict[str, float]:
    """One run of the rows of `args.phases` for one system."""
    single_n = max(args.jobs // 4, 1)
    rows: dict[str, float] = {}
    if "latency" in args.phases:
        rows["p50 ms"], rows["p99 ms"] = latency(system, log)
    if "single" in args.phases:
        rows["enqueue one"] = enqueue_single(system, single_n)
    if "sync" in args.phases:
        rows["enqueue one sync"] = enqueue_single_sync(system, single_n)
    if "bulk" in args.phases:
        rows["enqueue bulk"] = enqueue_bulk(system, args.jobs)
    if "process" in args.phases:
        rows["process"] = process(system, args.jobs, log)
    return rows


def measure_depth(system: System, args: argparse.Namespace, log: Path) -> list[float]:
    """`--runs` processing runs with `DEPTH` finished jobs in the table."""
    fresh(system)
    print(f"  {system.name}: inserting {DEPTH:,} finished jobs", file=sys.stderr)
    execute(system.dsn, system.schema, system.depth_sql())
    (floor,) = query(system.dsn, system.schema, system.floor_sql())
    system.floor = int(floor)
    # A table that holds a million finished jobs, not the minutes after they were
    # written: the vacuum autovacuum would start within a minute, and the checkpoint the
    # insert's WAL started, done now rather than during the runs.
    execute(system.dsn, system.schema, f"VACUUM {system.tables}")
    execute(system.dsn, system.schema, "CHECKPOINT")
    return [process(system, args.jobs, log, depth=True) for _ in range(args.runs)]


ROWS = [
    ("enqueue, one call per job (jobs/s)", "enqueue one", True),
    ("enqueue, one call per job from sync code (jobs/s)", "enqueue one sync", True),
    (f"enqueue, bulk {BATCH} per call (jobs/s)", "enqueue bulk", True),
    ("processing, 1 worker process (jobs/s)", "process", True),
    ("enqueue→start latency p50 (ms)", "p50 ms", False),
    ("enqueue→start latency p99 (ms)", "p99 ms", False),
]


def fmt(value: float, higher_is_better: bool) -> str:
    return f"{value:,.0f}" if higher_is_better else f"{value:.2f}"


def table(results: dict[str, dict[str, float]], depth: dict[str, float] | None) -> str:
    names = list(results)
    both = len(names) > 1
    lines = [
        "| row | " + " | ".join(names) + (" | offload / procrastinate |" if both else " |"),
        "|---|" + "---:|" * (len(names) + both),
    ]
    measured = results[names[0]]
    rows = [(label, key, hib, results) for label, key, hib in ROWS if key in measured]
    if depth is not None:
        label = f"processing, {DEPTH:,} finished jobs in the table (jobs/s)"
        rows.append((label, "process", True, {k: {"process": v} for k, v in depth.items()}))
    for label, key, hib, source in rows:
        cells = [fmt(source[name][key], hib) for name in names]
        if both:
            cells.append(f"{source['offload'][key] / source['procrastinate'][key]:.2f}x")
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--jobs", type=int, default=20_000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--depth", action="store_true", help="also process with 1M jobs")
    parser.add_argument("--concurrency", type=int, default=100, help="offload worker")
    parser.add_argument(
        "--procrastinate-concurrency", type=int, default=10, help="procrastinate worker"
    )
    parser.add_argument(
        "--phases", default=",".join(PHASES), help=f"comma-separated, of {','.join(PHASES)}"
    )
    parser.add_argument("--systems", default="offload,procrastinate")
    args = parser.parse_args()
    args.phases = [p for p in args.phases.split(",") if p]
    if unknown := set(args.phases) - set(PHASES):
        parser.error(f"unknown phases: {sorted(unknown)}")
    available: dict[str, System] = {
        "offload": OffloadSystem(DSN, args.concurrency),
        "procrastinate": ProcrastinateSystem(DSN, args.procrastinate_concurrency),
    }
    names = [n for n in args.systems.split(",") if n]
    if unknown := set(names) - set(available):
        parser.error(f"unknown systems: {sorted(unknown)}")
    systems = [available[n] for n in names]
    log = Path(tempfile.mkdtemp(prefix="bench-pg-")) / "workers.log"
    runs: dict[str, list[dict[str, float]]] = {s.name: [] for s in systems}
    for i in range(args.runs):
        for system in systems:
            print(f"run {i + 1}/{args.runs}: {system.name}", file=sys.stderr)
            runs[system.name].append(measure(system, args, log))
    results = {
        name: {k: statistics.median(r[k] for r in rs) for k in rs[0]} for name, rs in runs.items()
    }
    print(heading(args))
    print(table(results, None), flush=True)  # the depth rows take long: this one first
    if args.depth:
        depth = {s.name: statistics.median(measure_depth(s, args, log)) for s in systems}
        print(f"\nwith {DEPTH:,} finished jobs in the table:\n")
        print(table(results, depth))
    for system in systems:
        with admin(system.dsn) as conn:
            conn.execute(sql.SQL("DROP SCHEMA {} CASCADE").format(sql.Identifier(system.schema)))
    print(f"\nworker logs: {log}")


def heading(args: argparse.Namespace) -> str:
    return (
        f"\n{args.jobs:,} no-op jobs (one call per job: {max(args.jobs // 4, 1):,}; latency: "
        f"{PROBES} jobs {PROBE_GAP_S * 1000:.0f} ms apart), median of {args.runs} runs; "
        f"worker concurrency: offload {args.concurrency}, procrastinate "
        f"{args.procrastinate_concurrency}; procrastinate {procrastinate.__version__}\n"
    )


if __name__ == "__main__":
    # Run as the importable module, so the workers and the driver share one app each.
    import postgres_vs_procrastinate

    postgres_vs_procrastinate.main()
