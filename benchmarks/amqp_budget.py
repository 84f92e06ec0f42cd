"""Where the CPU of a RabbitMQ benchmark row goes: RabbitMQ's server, the producer, the
workers, Redis (the probe), per job, and how much of the machine was busy meanwhile.

    BENCH_REDIS_URL=redis://127.0.0.1:6379/11 benchmarks/.venv/bin/python \\
        benchmarks/amqp_budget.py [--systems offload-amqp-alone,dramatiq-rabbitmq] \\
        [--jobs 5000] [--processes 1] [--runs 3]

For each system and run (systems interleaved, as `peers.py` does): N jobs are enqueued
in bulk (the `bulk1`/`bulk2` phases' fill: RabbitMQ's CPU and the producer's own CPU
over it, per job), then K worker processes start; once a tenth of the jobs ran (the
workers are up: their start-up is not counted) until the last one, the CPU of every
worker process, of RabbitMQ (`beam.smp`) and of Redis (the probe's counters), per job,
and the whole machine's busy share (`/proc/stat`: 100% = every core). The sum per job
is the CPU a job costs end to end: on a machine of C cores, no worker count can process
more than `C / sum` jobs/s.
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import peers

TICK = os.sysconf("SC_CLK_TCK")


def _pid(name: str) -> int:
    return int(subprocess.check_output(["pgrep", "-o", "-x", name]).split()[0])


def _cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK


def _machine() -> tuple[float, float]:
    """(busy, total) jiffies of every core since boot."""
    values = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = values[3] + values[4]  # idle + iowait
    return sum(values) - idle, sum(values)


def _self_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def measure(system: str, args: argparse.Namespace) -> dict[str, float]:
    beam, redis = _pid("beam.smp"), _pid("redis-server")
    args.phase = f"budget{args.processes}"
    phase = peers.Phase(system, args)
    try:
        n = args.jobs
        b0, p0 = _cpu_s(beam), _self_s()
        started = time.perf_counter()
        phase.adapter.fill(n)
        enqueue_s = time.perf_counter() - started
        b1, p1 = _cpu_s(beam), _self_s()
        phase.start_workers(args.processes)
        phase.wait_done(n // 10, args.timeout)
        d0 = peers._done(phase.client)
        w0, b2, r0, m0, t0 = (
            phase.worker_cpu_s(),
            _cpu_s(beam),
            _cpu_s(redis),
            _machine(),
            time.perf_counter(),
        )
        phase.wait_done(n, args.timeout)
        w1, b3, r1, m1, t1 = (
            phase.worker_cpu_s(),
            _cpu_s(beam),
            _cpu_s(redis),
            _machine(),
            time.perf_counter(),
        )
        ran = n - d0
        return {
            "enqueue_rate": n / enqueue_s,
            "producer_us": (p1 - p0) / n * 1e6,
            "beam_enqueue_us": (b1 - b0) / n * 1e6,
            "rate": ran / (t1 - t0),
            "worker_us": (w1 - w0) / ran * 1e6,
            "beam_us": (b3 - b2) / ran * 1e6,
            "redis_us": (r1 - r0) / ran * 1e6,
            "busy": (m1[0] - m0[0]) / (m1[1] - m0[1]),
        }
    finally:
        phase.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--systems", default="offload-amqp-alone,offload-amqp,dramatiq-rabbitmq")
    parser.add_argument("--jobs", type=int, default=5000)
    parser.add_argument("--processes", type=int, default=1)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--timeout", type=float, default=240.0)
    args = parser.parse_args()
    logdir = Path(f"/tmp/amqp-budget-{os.getpid()}")
    logdir.mkdir(exist_ok=True)
    args.logdir, args.pidfile = str(logdir), str(logdir / "pids")
    args.body = "noop"
    systems = [s for s in args.systems.split(",") if s]
    rows: dict[str, list[dict[str, float]]] = {s: [] for s in systems}
    print(f"load {os.getloadavg()[0]:.2f}; {args.jobs} jobs, {args.processes} worker process(es)")
    for run in range(args.runs):
        for system in systems:
            rows[system].append(measure(system, args))
            r = rows[system][-1]
            print(f"  run {run + 1} {system}: " + ", ".join(f"{k} {v:,.3g}" for k, v in r.items()))
        print(f"  load {os.getloadavg()[0]:.2f}", file=sys.stderr)
    keys = list(rows[systems[0]][0])
    print("\n| system | " + " | ".join(keys) + " | sum µs/job (processing) |")
    print("|---|" + "---:|" * (len(keys) + 1))
    for system, results in rows.items():
        med = {k: statistics.median(r[k] for r in results) for k in keys}
        total = med["worker_us"] + med["beam_us"] + med["redis_us"]
        cells = [
            f"{med[k]:.0%}" if k == "busy" else f"{med[k]:,.0f}" if k.endswith("rate")
            else f"{med[k]:.1f}"
            for k in keys
        ]  # fmt: skip
        print(f"| {system} | " + " | ".join(cells) + f" | {total:.1f} |")
    print(f"load {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
