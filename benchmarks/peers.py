"""offload against its Python peers on one local Redis; prints a Markdown table.

    benchmarks/run.sh [--jobs 20000] [--runs 3] [--systems a,b] [--depth] [--output F]

Every system runs the same phases with no-op jobs (see benchmarks/README.md for what
each column measures and each peer's configuration). Each phase runs in a fresh
subprocess bounded by a timeout, with the system's workers as real subprocesses; a
stuck or failing peer gets `timeout` / `error` in its cells and the run goes on.
Redis DB 15 is flushed before every phase (no other DB is touched). Every cell is
the median of `--runs` runs, and a run counts only if all its jobs were seen to run.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import json
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

BENCH_DIR = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH_DIR))

from adapters import ADAPTERS, NOT_PEERS, _probe  # noqa: E402
from adapters.base import Adapter  # noqa: E402

#: The benchmark's own Redis database; it is flushed before every phase.
REDIS_URL = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/15")
#: Seconds a worker gets to start and run its first job in the latency phase.
WARMUP_TIMEOUT_S = 90.0
#: Delay of the jobs in the delayed-depth phase: far beyond the run.
DELAYED_BY_S = 86_400.0

PHASES = ("single", "bulk1", "bulk2", "latency", "cpu")
DEPTH_PHASES = ("queued", "delayed")


class PhaseError(Exception):
    """A phase failed; the message goes into the table cell."""


# -- inside a phase subprocess ---------------------------------------------------------


def _redis() -> Any:
    import redis

    return redis.Redis.from_url(REDIS_URL)


def _done(client: Any) -> int:
    return int(client.get(_probe.DONE_KEY) or 0)


class Phase:
    """One phase of one system, run in its own process."""

    def __init__(self, system: str, args: argparse.Namespace) -> None:
        self.system = system
        self.args = args
        self.client = _redis()
        self.client.flushdb()
        self.workdir = Path(tempfile.mkdtemp(prefix="offload-bench-"))
        module, _, cls = ADAPTERS[system].partition(":")
        self.adapter: Adapter = getattr(importlib.import_module(module), cls)(
            REDIS_URL, self.workdir
        )
        self.procs: list[subprocess.Popen[bytes]] = []
        self.logs: list[Path] = []

    def close(self) -> None:
        self.stop_workers()
        with contextlib.suppress(Exception):
            self.adapter.close()
        shutil.rmtree(self.workdir, ignore_errors=True)

    # -- workers -----------------------------------------------------------------------

    def start_workers(self, processes: int) -> None:
        env = self.adapter.worker_env()
        logdir = Path(self.args.logdir)
        for i, argv in enumerate(self.adapter.workers(processes)):
            log = logdir / f"{self.system}-{self.args.phase}-p{processes}-{i}.log"
            self.logs.append(log)
            with log.open("ab") as out:
                out.write(f"$ {' '.join(argv)}\n".encode())
                out.flush()
                proc = subprocess.Popen(
                    argv,
                    cwd=BENCH_DIR,
                    env=env,
                    stdin=subprocess.DEVNULL,
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                )
            self.procs.append(proc)
            with open(self.args.pidfile, "a") as f:
                f.write(f"{proc.pid}\n")

    def stop_workers(self) -> None:
        for proc in self.procs:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
        for proc in self.procs:
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(10)
        self.procs.clear()

    def wait_done(self, n: int, timeout_s: float) -> None:
        """Until `n` jobs were counted; fail if the workers died or time ran out."""
        deadline = time.monotonic() + timeout_s
        while _done(self.client) < n:
            if self.procs and all(p.poll() is not None for p in self.procs):
                raise PhaseError(f"workers exited; see {self.logs[0]}")
            if time.monotonic() > deadline:
                raise PhaseError(f"timeout: {_done(self.client)}/{n} jobs ran")
            time.sleep(0.005)

    def starts(self, n: int) -> list[float]:
        starts = sorted(_probe.read_floats(self.client, _probe.TS_KEY))[:n]
        if len(starts) < n:
            raise PhaseError(f"{len(starts)} start times for {n} jobs")
        return starts

    def processing_rate(self, n: int) -> float:
        """Steady-state jobs/s: the middle 80% of the first `n` job starts."""
        starts = self.starts(n)
        lo, hi = n // 10, n - n // 10 - 1
        return (hi - lo) / max(starts[hi] - starts[lo], 1e-9)

    def first_to_last_rate(self, n: int) -> float:
        """What a user sees: jobs/s from the first job's start to the last one's."""
        starts = self.starts(n)
        return (n - 1) / max(starts[-1] - starts[0], 1e-9)

    def worker_cpu_s(self) -> float:
        """User + system CPU seconds of every live process of the workers' process
        groups (each worker command is a session leader; forked children share it)."""
        groups = {p.pid for p in self.procs}
        tick = os.sysconf("SC_CLK_TCK")
        total = 0
        for stat in Path("/proc").glob("[0-9]*/stat"):
            with contextlib.suppress(OSError, IndexError, ValueError):
                fields = stat.read_text().rsplit(")", 1)[1].split()
                if int(fields[2]) in groups:  # pgrp
                    total += int(fields[11]) + int(fields[12])  # utime, stime
        return total / tick

    def storage(self) -> int:
        size = self.adapter.storage_bytes()
        if size is not None:
            return size
        return int(self.client.info("memory")["used_memory"])

    # -- phases ------------------------------------------------------------------------

    def single(self) -> dict[str, float]:
        n = self.args.jobs
        started = time.perf_counter()
        self.adapter.enqueue_one(n)
        rate = n / (time.perf_counter() - started)
        self.start_workers(2)
        self.wait_done(n, self.args.timeout)
        return {"enqueue_one": rate}

    def bulk(self, processes: int) -> dict[str, float]:
        n = self.args.jobs
        out: dict[str, float] = {}
        before = self.storage()
        started = time.perf_counter()
        self.adapter.fill(n)
        if self.adapter.bulk_api:
            out["enqueue_bulk"] = n / (time.perf_counter() - started)
        if self.adapter.queues_in_redis or self.adapter.storage_bytes() is not None:
            out["memory"] = (self.storage() - before) / n
        self.start_workers(processes)
        self.wait_done(n, self.args.timeout)
        out[f"process{processes}"] = self.processing_rate(n)
        out[f"process{processes}_all"] = self.first_to_last_rate(n)
        return out

    def latency(self) -> dict[str, float]:
        n, rate = self.args.latency_jobs, self.args.latency_rate
        self.start_workers(1)
        self.adapter.enqueue_one(10)  # warm-up: the worker is up and idle
        self.wait_done(10, WARMUP_TIMEOUT_S)
        time.sleep(0.5)
        self.client.delete(_probe.DONE_KEY, _probe.TS_KEY, _probe.LAT_KEY)
        before = self.worker_cpu_s()
        self.adapter.enqueue_paced(n, rate)
        self.wait_done(n, self.args.timeout)
        idle_cpu_us = (self.worker_cpu_s() - before) / n * 1e6
        deadline = time.monotonic() + 2
        while len(lats := _probe.read_floats(self.client, _probe.LAT_KEY)) < n:
            if time.monotonic() > deadline:
                raise PhaseError(f"{len(lats)} latencies for {n} jobs")
            time.sleep(0.01)
        lats.sort()
        p99 = lats[int(n * 0.99) - 1] * 1000
        return {"p50": lats[n // 2] * 1000, "p99": p99, "idle_cpu_us": idle_cpu_us}

    def cpu(self) -> dict[str, float]:
        """Worker CPU per job: 1 worker process, warmed up and idle, then N jobs queued
        at once; user + system CPU of its processes while it runs them, / N."""
        n = self.args.jobs
        self.start_workers(1)
        self.adapter.enqueue_one(10)
        self.wait_done(10, WARMUP_TIMEOUT_S)
        time.sleep(0.5)
        self.client.delete(_probe.DONE_KEY, _probe.TS_KEY, _probe.LAT_KEY)
        before = self.worker_cpu_s()
        self.adapter.fill(n)
        self.wait_done(n, self.args.timeout)
        return {"cpu_us": (self.worker_cpu_s() - before) / n * 1e6}

    def queued(self) -> dict[str, float]:
        n = self.args.jobs
        self.adapter.fill(self.args.depth_jobs)
        self.start_workers(1)
        self.wait_done(n, self.args.timeout)
        return {"queued": self.processing_rate(n)}

    def delayed(self) -> dict[str, float]:
        if not self.adapter.supports_delay:
            return {}
        n = self.args.jobs
        self.adapter.enqueue_delayed(self.args.depth_jobs, DELAYED_BY_S)
        self.adapter.fill(n)
        self.start_workers(1)
        self.wait_done(n, self.args.timeout)
        time.sleep(0.2)
        if (count := _done(self.client)) != n:
            raise PhaseError(f"error: {count} jobs ran, expected {n} (delayed ones ran early)")
        return {"delayed": self.processing_rate(n)}

    def run(self) -> dict[str, Any]:
        phase = self.args.phase
        actions: dict[str, Callable[[], dict[str, float]]] = {
            "single": self.single,
            "bulk1": lambda: self.bulk(1),
            "bulk2": lambda: self.bulk(2),
            "latency": self.latency,
            "cpu": self.cpu,
            "queued": self.queued,
            "delayed": self.delayed,
        }
        metrics = actions[phase]()
        return {
            "name": self.adapter.name,
            "config": self.adapter.config,
            "bulk_api": self.adapter.bulk_api,
            "metrics": metrics,
        }


def phase_main(args: argparse.Namespace) -> None:
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(3))
    result: dict[str, Any]
    phase = None
    try:
        phase = Phase(args.system, args)
        result = phase.run()
    except PhaseError as exc:
        result = {"error": str(exc)}
    except Exception as exc:
        result = {"error": f"error: {type(exc).__name__}: {exc}"}
    finally:
        if phase is not None:
            phase.close()
    print("RESULT " + json.dumps(result), flush=True)


# -- the driver ------------------------------------------------------------------------


def run_phase(system: str, phase: str, args: argparse.Namespace, timeout_s: float) -> Any:
    """Run one phase in a subprocess; returns its result dict, or {"error": ...}."""
    pidfile = Path(args.logdir) / "workers.pid"
    pidfile.write_text("")
    argv = [sys.executable, __file__, "--phase", phase, "--system", system,
            "--jobs", str(args.jobs), "--depth-jobs", str(args.depth_jobs),
            "--latency-jobs", str(args.latency_jobs), "--latency-rate", str(args.latency_rate),
            "--timeout", str(timeout_s), "--logdir", args.logdir,
            "--pidfile", str(pidfile)]  # fmt: skip
    proc = subprocess.Popen(
        argv, cwd=BENCH_DIR, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        start_new_session=True,
    )  # fmt: skip
    try:
        out, err = proc.communicate(timeout=timeout_s + 60)
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGTERM)
        try:
            out, err = proc.communicate(timeout=15)
        except subprocess.TimeoutExpired:
            out, err = b"", b""
        result: Any = {"error": "timeout"}
    else:
        result = None
    finally:
        _kill_leftovers(proc, pidfile)
    if result is None:
        lines = [ln for ln in out.decode(errors="replace").splitlines() if ln.startswith("RESULT ")]
        if lines:
            result = json.loads(lines[-1][len("RESULT ") :])
        else:
            tail = err.decode(errors="replace").strip().splitlines()[-1:] or ["no output"]
            result = {"error": f"error: {tail[0][:200]}"}
    if "error" in result:
        (Path(args.logdir) / f"{system}-{phase}.stderr").write_bytes(err)
    return result


def _kill_leftovers(proc: subprocess.Popen[bytes], pidfile: Path) -> None:
    pids = [proc.pid] + [int(p) for p in pidfile.read_text().split() if p.strip()]
    for pid in pids:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pid, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(5)


#: Table columns: key, header, higher is better.
COLUMNS: list[tuple[str, str, bool]] = [
    ("enqueue_one", "enqueue, one call per job (jobs/s)", True),
    ("enqueue_bulk", "enqueue, bulk (jobs/s)", True),
    ("process1", "process, 1 worker process (jobs/s)", True),
    ("process1_all", "process, 1 worker process, first→last job (jobs/s)", True),
    ("process2", "process, 2 worker processes (jobs/s)", True),
    ("process2_all", "process, 2 worker processes, first→last job (jobs/s)", True),
    ("p50", "enqueue→start p50 (ms)", False),
    ("p99", "enqueue→start p99 (ms)", False),
    ("memory", "broker bytes per queued job", False),
    ("cpu_us", "worker CPU per job (µs)", False),
    ("idle_cpu_us", "worker CPU per job, paced (µs)", False),
    ("queued", "process, 1M queued (jobs/s)", True),
    ("delayed", "process, 1M delayed waiting (jobs/s)", True),
]
#: Which phase produces which column.
PHASE_OF = {
    "enqueue_one": "single",
    "enqueue_bulk": "bulk",
    "process1": "bulk1",
    "process2": "bulk2",
    "process1_all": "bulk1",
    "process2_all": "bulk2",
    "cpu_us": "cpu",
    "p50": "latency",
    "p99": "latency",
    "idle_cpu_us": "latency",
    "memory": "bulk",
    "queued": "queued",
    "delayed": "delayed",
}


class Results:
    def __init__(self) -> None:
        self.values: dict[str, dict[str, list[float]]] = {}
        self.errors: dict[str, dict[str, str]] = {}
        self.info: dict[str, dict[str, Any]] = {}
        self.ran: dict[str, set[str]] = {}

    def add(self, system: str, phase: str, result: dict[str, Any]) -> None:
        self.ran.setdefault(system, set()).add(phase)
        if "error" in result:
            self.errors.setdefault(system, {})[phase] = result["error"]
            return
        self.info[system] = result
        for key, value in result["metrics"].items():
            self.values.setdefault(system, {}).setdefault(key, []).append(value)

    def median(self, system: str, key: str) -> float | None:
        """The median, only if no run of the phase behind `key` failed."""
        phase = PHASE_OF[key]
        errs = self.errors.get(system, {})
        if phase in errs or (phase == "bulk" and ({"bulk1", "bulk2"} & errs.keys())):
            return None
        values = self.values.get(system, {}).get(key)
        return statistics.median(values) if values else None

    def cell_note(self, system: str, key: str) -> str:
        phase = PHASE_OF[key]
        errs = self.errors.get(system, {})
        for name in (phase,) if phase != "bulk" else ("bulk1", "bulk2"):
            if name in errs:
                msg = errs[name]
                for word in ("timeout", "not available"):
                    if word in msg:
                        return word
                return "error"
        ran = self.ran.get(system, set())
        if phase == "bulk":
            return "n/a" if ran & {"bulk1", "bulk2"} else "—"
        return "n/a" if phase in ran else "—"


def fmt(value: float, key: str) -> str:
    if key in ("p50", "p99"):
        return f"{value:.2f}" if value < 100 else f"{value:,.0f}"
    return f"{value:,.0f}"


def table(results: Results, systems: list[str], columns: list[tuple[str, str, bool]]) -> str:
    best: dict[str, float] = {}
    for key, _, higher in columns:
        peer_values = [
            v for s in systems if s not in NOT_PEERS if (v := results.median(s, key)) is not None
        ]
        if peer_values:
            best[key] = max(peer_values) if higher else min(peer_values)
    lines = [
        "| system | " + " | ".join(h for _, h, _ in columns) + " |",
        "|---|" + "---:|" * len(columns),
    ]
    for system in systems:
        name = results.info.get(system, {}).get("name", system)
        cells = []
        for key, _, _ in columns:
            value = results.median(system, key)
            if value is None:
                cells.append(results.cell_note(system, key))
                continue
            ratio = f" ({value / best[key]:.2f}x)" if best.get(key) else ""
            cells.append(fmt(value, key) + ratio)
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def machine_info() -> str:
    cpu = "?"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    try:
        redis_version = _redis().info("server")["redis_version"]
    except Exception:
        redis_version = "?"
    return (
        f"nproc {os.cpu_count()}, {cpu}, Python {platform.python_version()}, "
        f"Redis {redis_version}, {platform.system()} {platform.release()}"
    )


def load() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--jobs", type=int, default=20_000, help="jobs per phase (default 20,000)")
    parser.add_argument("--runs", type=int, default=3, help="runs per cell; the median is shown")
    parser.add_argument("--systems", default=",".join(ADAPTERS), help="comma-separated systems")
    parser.add_argument(
        "--phases",
        default=",".join(PHASES),
        help=f"comma-separated phases (default all: {','.join(PHASES)})",
    )
    parser.add_argument("--depth", action="store_true", help="also run the 1M-deep rows")
    parser.add_argument("--depth-systems", default=None,
                        help="systems for the depth rows (default: offload, the ceiling and "
                             "the 2 peers fastest with 1 process)")  # fmt: skip
    parser.add_argument("--depth-jobs", type=int, default=1_000_000)
    parser.add_argument("--latency-jobs", type=int, default=500)
    parser.add_argument("--latency-rate", type=float, default=500.0, help="jobs/s")
    parser.add_argument("--timeout", type=float, default=240.0, help="seconds per phase")
    parser.add_argument("--depth-timeout", type=float, default=1500.0, help="seconds per phase")
    parser.add_argument("--output", default=None, help="also write the report to this file")
    parser.add_argument("--body", choices=("noop", "io"), default="noop",
                        help="noop, or io: one real Redis round trip per job")  # fmt: skip
    parser.add_argument("--phase", help=argparse.SUPPRESS)
    parser.add_argument("--system", help=argparse.SUPPRESS)
    parser.add_argument("--logdir", help=argparse.SUPPRESS)
    parser.add_argument("--pidfile", help=argparse.SUPPRESS)
    args = parser.parse_args()
    args.systems = [s.strip() for s in args.systems.split(",") if s.strip()]
    args.phases = tuple(p.strip() for p in args.phases.split(",") if p.strip())
    if set(args.phases) - set(PHASES):
        parser.error(f"unknown phases {sorted(set(args.phases) - set(PHASES))}; known: {PHASES}")
    unknown = set(args.systems) - ADAPTERS.keys()
    if unknown and not args.phase:
        parser.error(f"unknown systems {sorted(unknown)}; known: {', '.join(ADAPTERS)}")
    return args


def run_phases(
    args: argparse.Namespace,
    results: Results,
    systems: list[str],
    phases: tuple[str, ...],
    timeout_s: float,
) -> None:
    """Every phase of every system, `--runs` times, runs interleaved against drift."""
    for run in range(args.runs):
        for system in systems:
            for phase in phases:
                t0 = time.monotonic()
                result = run_phase(system, phase, args, timeout_s)
                results.add(system, phase, result)
                outcome = result.get("error") or result["metrics"]
                took = time.monotonic() - t0
                print(f"run {run + 1}/{args.runs} {system:17} {phase:8} {took:6.1f}s "
                      f"load {os.getloadavg()[0]:.2f} {outcome}", file=sys.stderr)  # fmt: skip


def pick_depth_systems(args: argparse.Namespace, results: Results) -> list[str]:
    if args.depth_systems:
        return [s.strip() for s in args.depth_systems.split(",")]
    peers = [s for s in args.systems if s not in NOT_PEERS]
    ranked = sorted(
        (s for s in peers if results.median(s, "process1") is not None),
        key=lambda s: -(results.median(s, "process1") or 0),
    )
    return [s for s in args.systems if s in NOT_PEERS] + ranked[:2]


def report(args: argparse.Namespace, results: Results, depth_systems: list[str]) -> str:
    columns = COLUMNS if args.depth else COLUMNS[:11]
    body = "no-op jobs" if args.body == "noop" else "jobs making one Redis round trip each"
    lines = [
        f"{args.jobs:,} {body} per phase, median of {args.runs} runs; latency: "
        f"{args.latency_jobs} jobs at {args.latency_rate:,.0f} jobs/s to 1 idle worker process"
        + (f"; depth rows: {args.depth_jobs:,} jobs queued or delayed" if args.depth else ""),
        "",
        f"Machine: {machine_info()}; load average {args.load_start} at the start, "
        f"{load()} at the end",
        "",
        table(results, args.systems, columns),
        "",
        "(x) = ratio to the best peer in the column (offload and the raw ceiling excluded); "
        "for throughput higher is better, for latency and memory lower is better. "
        "n/a = the system has no such API; — = not run.",
    ]
    if depth_systems:
        lines.append(f"Depth rows ran for: {', '.join(depth_systems)}.")
    lines += ["", "Configurations:", ""]
    for system in args.systems:
        info = results.info.get(system)
        if info:
            bulk = f"; bulk: {info['bulk_api']}" if info.get("bulk_api") else "; bulk: n/a"
            lines.append(f"- **{info['name']}**: {info['config']}{bulk}")
        else:
            errs = results.errors.get(system, {})
            lines.append(f"- **{system}**: {next(iter(errs.values()), 'not run')}")
    return "\n".join(lines)


def main() -> None:
    args = parse_args()
    if args.phase:
        phase_main(args)
        return
    args.logdir = tempfile.mkdtemp(prefix="offload-bench-logs-")
    args.load_start = load()
    os.environ["BENCH_BODY"] = args.body  # read by every job (adapters/_probe.py)
    print(f"logs: {args.logdir}; load average {args.load_start}", file=sys.stderr)
    results = Results()
    run_phases(args, results, args.systems, args.phases, args.timeout)
    depth_systems: list[str] = []
    if args.depth:
        # The main table first: the depth rows take long, and a partial result helps.
        depth, args.depth = args.depth, False
        print(report(args, results, []) + "\n", file=sys.stderr, flush=True)
        args.depth = depth
        depth_systems = pick_depth_systems(args, results)
        run_phases(args, results, depth_systems, DEPTH_PHASES, args.depth_timeout)
    text = report(args, results, depth_systems)
    print(text)
    if args.output:
        Path(args.output).write_text(text + "\n")


if __name__ == "__main__":
    main()
