"""What every chaos scenario shares: a worker app that records each run, real
`offload worker` processes, a producer, and the tally of what happened to every job.

Each run of a handler appends lines to `runs/<pid>.log` (one `os.write` of a short line
in append mode, so lines from threads and processes never interleave):
`S <job id> <attempt> <pid> <t>` at its start, `T ...` every 0.1 s while a long job
sleeps, and `E ...` when it returns. `t` is `time.monotonic()`, one clock for every
process of the machine. A run's last line is the latest moment it was certainly alive,
so two runs of one job overlapped if one started before the other's last line: a lower
bound of the overlap, never a false one.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import textwrap
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from offload import JobState, Offload
from offload.brokers.base import JobInfo, QueueStats
from offload.envelope import TERMINAL_STATES
from tests.chaos import _report
from tests.integration.test_worker_process import stop_all, wait_for

__all__ = [
    "BROKERS",
    "Fleet",
    "Run",
    "Tally",
    "alive",
    "env_int",
    "overlapping",
    "read_runs",
    "wait_for",
]

#: The brokers every scenario runs on (names of the `broker_url` fixture).
BROKERS = ["sqlite", "postgres", "redis", "redis_cluster"]

APP_SOURCE = textwrap.dedent(
    """
    import asyncio, os, sys, time
    from offload import Every, Offload, current_job

    app = Offload()
    RUNS = os.environ["CHAOS_RUNS"]

    def note(event):
        job = current_job()
        line = f"{event} {job.id} {job.attempt} {os.getpid()} {time.monotonic():.6f}\\n"
        fd = os.open(f"{RUNS}/{os.getpid()}.log", os.O_WRONLY | os.O_CREAT | os.O_APPEND)
        try:
            os.write(fd, line.encode())
        finally:
            os.close(fd)

    # Kills burn attempts (of running and prefetched jobs): a budget no kill pattern
    # exhausts, since the scenarios count lost and doubled runs, not retries.
    @app.task(name="work", max_attempts=100)
    def work(seconds: float) -> float:
        note("S")
        end = time.monotonic() + seconds
        while (left := end - time.monotonic()) > 0:
            time.sleep(min(left, 0.1))
            if seconds >= 0.5:
                note("T")
        note("E")
        return seconds

    @app.task(name="awork", max_attempts=100)
    async def awork(seconds: float) -> float:
        note("S")
        end = time.monotonic() + seconds
        while (left := end - time.monotonic()) > 0:
            await asyncio.sleep(min(left, 0.1))
            if seconds >= 0.5:
                note("T")
        note("E")
        return seconds

    @app.task(name="ok")
    def ok(n: int) -> int:
        return n

    @app.task(name="exits", max_attempts=1)
    def exits() -> None:
        sys.exit(3)

    @app.task(name="aexits", max_attempts=1)
    async def aexits() -> None:
        sys.exit(3)

    @app.task(name="interrupt", max_attempts=1)
    def interrupt() -> None:
        raise KeyboardInterrupt

    @app.task(name="ainterrupt", max_attempts=1)
    async def ainterrupt() -> None:
        raise KeyboardInterrupt

    @app.task(name="huge_error", max_attempts=1)
    def huge_error() -> None:
        raise ValueError("x" * 20_000_000)

    app.schedule("ok", Every(3600), args=(1,))
    """
)


def env_int(name: str, default: int) -> int:
    """A count for a scenario, from `CHAOS_<NAME>` if set: longer soaks need no edit."""
    return int(os.environ.get(f"CHAOS_{name}", default))


@dataclass
class Run:
    """One run of one job by one process, as its handler recorded it."""

    job_id: str
    attempt: int
    pid: int
    start: float
    last: float  # the last moment it was certainly alive
    ended: bool = False


@dataclass
class Tally:
    """What became of the jobs whose enqueue returned."""

    jobs: int
    lost: list[str] = field(default_factory=list)  # missing, or ended other than succeeded
    stuck: list[str] = field(default_factory=list)  # not in a final state
    twice: list[str] = field(default_factory=list)  # started more than once
    overlapping: list[str] = field(default_factory=list)  # two runs at once
    unfinished: list[str] = field(default_factory=list)  # succeeded, but no run returned

    def record(
        self, broker: str, scenario: str, *, faults: int, jobs: int | None = None, note: str = ""
    ) -> None:
        """Add these counts to the chaos report's row (`_report.record`)."""
        _report.record(
            broker,
            scenario,
            jobs=self.jobs if jobs is None else jobs,
            faults=faults,
            lost=len(self.lost),
            overlapping=len(self.overlapping),
            stuck=len(self.stuck),
            note=note,
        )

    def clean(self, *, unfinished: bool = True) -> bool:
        """No job lost, stuck or run twice at once (nor, if `unfinished`, succeeded
        without a finished run)."""
        return not (self.lost or self.stuck or self.overlapping or (unfinished and self.unfinished))

    def summary(self) -> str:
        return (
            f"jobs={self.jobs} lost={len(self.lost)} stuck={len(self.stuck)} "
            f"ran twice={len(self.twice)} overlapping={len(self.overlapping)} "
            f"succeeded without a finished run={len(self.unfinished)}; "
            f"lost {self.lost[:5]} stuck {self.stuck[:5]} overlapping {self.overlapping[:5]}"
        )


class Fleet:
    """A worker app in a temporary directory (`chaosapp:app`, APP_SOURCE unless
    given), its `offload worker` processes and a producer, all on one broker URL (the
    workers' may differ, e.g. by an application_name). `close()` stops every process
    it started."""

    def __init__(
        self,
        tmp_path: Path,
        url: str,
        worker_url: str | None = None,
        app_source: str = APP_SOURCE,
    ) -> None:
        self.dir = tmp_path
        self.url = url
        self.runs_dir = tmp_path / "runs"
        self.runs_dir.mkdir(exist_ok=True)
        self.logs = tmp_path / "logs"
        self.logs.mkdir(exist_ok=True)
        (tmp_path / "chaosapp.py").write_text(app_source)
        self.env = {
            **os.environ,
            "OFFLOAD_URL": worker_url or url,
            "CHAOS_RUNS": str(self.runs_dir),
            "PYTHONPATH": str(tmp_path),
        }
        self.procs: list[subprocess.Popen[bytes]] = []
        self.app = Offload(url)

    # -- processes ------------------------------------------------------------------------

    def start_worker(self, *args: str) -> subprocess.Popen[bytes]:
        """An `offload worker` process; its output goes to `logs/worker-<n>.log`."""
        log = (self.logs / f"worker-{len(self.procs)}.log").open("wb")
        argv = [sys.executable, "-m", "offload", "worker", "chaosapp:app", "--poll", "0.05"]
        proc = subprocess.Popen(
            [*argv, *args], env=self.env, cwd=self.dir, stdout=log, stderr=subprocess.STDOUT
        )
        log.close()  # the child holds its own copy
        self.procs.append(proc)
        return proc

    def kill(self, proc: subprocess.Popen[bytes]) -> None:
        proc.send_signal(signal.SIGKILL)
        proc.wait()

    def offload(self, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        """Run one `offload` CLI command to completion."""
        return subprocess.run(
            [sys.executable, "-m", "offload", *args],
            env=self.env,
            cwd=self.dir,
            capture_output=True,
            text=True,
            timeout=timeout,
        )

    def worker_logs(self) -> str:
        return "\n".join(p.read_text(errors="replace") for p in sorted(self.logs.glob("*.log")))

    def close(self) -> None:
        stop_all(self.procs, timeout=15)
        self.app.close()

    # -- what happened --------------------------------------------------------------------

    def runs(self) -> dict[str, list[Run]]:
        """Every recorded run, per job id, in start order."""
        return read_runs(self.runs_dir)

    def infos(self, ids: Sequence[str]) -> dict[str, JobInfo | None]:
        """The broker's record of each job, None when it has none."""

        async def fetch() -> list[JobInfo | None]:
            broker = await self.app.connected_broker()
            out: list[JobInfo | None] = []
            for start in range(0, len(ids), 8):  # a few in flight: the pool is bounded
                chunk = ids[start : start + 8]
                # Every call ends before an error is raised: none is left running
                # when the app's loop closes.
                calls = (broker.get_job(i) for i in chunk)
                got = await asyncio.gather(*calls, return_exceptions=True)
                for value in got:
                    if isinstance(value, BaseException):
                        raise value
                out += got  # type: ignore[arg-type]
            return out

        return dict(zip(ids, self.app.portal.run(fetch()), strict=True))

    def states(self, queue: str | None = "default") -> dict[JobState, int]:
        """How many jobs of `queue` (None: of every queue) are in each state (one
        cheap broker call)."""

        async def counts() -> dict[str, QueueStats]:
            broker = await self.app.connected_broker()
            return await broker.counts(None if queue is None else [queue])

        total: dict[JobState, int] = {}
        for name, stats in self.app.portal.run(counts()).items():
            if queue is None or name == queue:
                for state, n in stats.states.items():
                    total[state] = total.get(state, 0) + n
        return total

    def workers(self) -> int:
        """How many workers are registered with the broker."""

        async def registered() -> int:
            broker = await self.app.connected_broker()  # the portal's own connections
            return len(await broker.workers())

        return self.app.portal.run(registered())

    def finished(self, queue: str = "default") -> int:
        """How many jobs of `queue` are in a final state."""
        states = self.states(queue)
        return sum(states.get(s, 0) for s in TERMINAL_STATES)

    def settled(self, ids: Sequence[str]) -> bool:
        """Every job is in a final state."""
        infos = self.infos(ids)
        return all(i is not None and i.state in TERMINAL_STATES for i in infos.values())

    def wait_settled(self, ids: Sequence[str], timeout: float) -> None:
        """Wait until every job is final, or the deadline: stuck jobs are counted, not
        raised here, so the scenario's row is written either way."""
        try:
            wait_for(lambda: self.finished() >= len(ids), timeout=timeout)
            wait_for(lambda: self.settled(ids), timeout=timeout)
        except AssertionError:
            pass

    def tally(self, ids: Sequence[str]) -> Tally:
        infos = self.infos(ids)
        runs = self.runs()
        tally = Tally(jobs=len(ids))
        for job_id in ids:
            info = infos[job_id]
            job_runs = runs.get(job_id, [])
            if info is None or info.state in TERMINAL_STATES - {JobState.SUCCEEDED}:
                tally.lost.append(job_id)
            elif info.state not in TERMINAL_STATES:
                tally.stuck.append(job_id)
            elif job_runs and not any(r.ended for r in job_runs):
                tally.unfinished.append(job_id)
            if len(job_runs) > 1:
                tally.twice.append(job_id)
            if overlapping(job_runs):
                tally.overlapping.append(job_id)
        return tally


class StorelessFleet(Fleet):
    """A `Fleet` on a broker without a state store (`amqp://` alone): nothing can be
    looked up, so what became of each job is read from its runs alone. A job is done
    when one of its runs returned (every task of `APP_SOURCE` that a scenario enqueues
    succeeds); it is lost when none did."""

    def done(self) -> set[str]:
        return {job_id for job_id, runs in self.runs().items() if any(r.ended for r in runs)}

    def finished(self, queue: str = "default") -> int:
        return len(self.done())

    def settled(self, ids: Sequence[str]) -> bool:
        return set(ids) <= self.done()

    def tally(self, ids: Sequence[str]) -> Tally:
        runs = self.runs()
        tally = Tally(jobs=len(ids))
        for job_id in ids:
            job_runs = runs.get(job_id, [])
            if not any(r.ended for r in job_runs):
                tally.lost.append(job_id)
            if len(job_runs) > 1:
                tally.twice.append(job_id)
            if overlapping(job_runs):
                tally.overlapping.append(job_id)
        return tally


def read_runs(runs_dir: Path) -> dict[str, list[Run]]:
    """Every run recorded under `runs_dir` (see the module docstring), per job id, in
    start order. Lines other than S, T and E (a consumer's own notes) are skipped."""
    runs: dict[tuple[str, int, int], Run] = {}
    for path in runs_dir.glob("*.log"):
        for line in path.read_text().splitlines():
            event, job_id, attempt, pid, at = line.split()
            key = (job_id, int(attempt), int(pid))
            t = float(at)
            if event == "S":
                runs[key] = Run(job_id, int(attempt), int(pid), t, t)
            elif event in ("T", "E"):
                run = runs[key]
                run.last = max(run.last, t)
                run.ended = run.ended or event == "E"
    by_job: dict[str, list[Run]] = {}
    for run in sorted(runs.values(), key=lambda r: r.start):
        by_job.setdefault(run.job_id, []).append(run)
    return by_job


def overlapping(runs: Iterable[Run]) -> bool:
    """Two of these runs (of one job) were certainly alive at the same moment."""
    ordered = sorted(runs, key=lambda r: r.start)
    latest = float("-inf")
    for run in ordered:
        if run.start < latest:
            return True
        latest = max(latest, run.last)
    return False


def alive(procs: Iterable[subprocess.Popen[bytes]]) -> bool:
    return all(p.poll() is None for p in procs)
