"""`offload worker` processes at shutdown and recycling, on the embedded SQLite broker:
a job is never handed back while its handler may still run, a handler's `sys.exit()`
ends its job only, and workers recycle themselves without losing or charging a job.

Every run of the tracked tasks appends `start`, `tick` (every 50 ms) and `end` lines
with its pid and a wall-clock time to one file, so two runs of one job at the same
time show up as overlapping intervals, whatever the machine's load."""

from __future__ import annotations

import itertools
import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from offload import JobState, Offload
from tests.integration.test_worker_process import Env, wait_for

APP_SOURCE = textwrap.dedent(
    """
    import os, pathlib, sys, time
    from offload import Offload, current_job

    app = Offload()
    OUT = pathlib.Path(os.environ["JOBS_OUT"])
    KEPT = []

    def record(event: str) -> None:
        job = current_job()
        line = f"{job.id} {job.attempt} {os.getpid()} {event} {time.time():.6f}\\n"
        with open(OUT / "runs.log", "a") as f:
            f.write(line)

    def tracked_run(first_s: float) -> int:
        record("start")
        seconds = first_s if current_job().attempt == 1 else 0.2
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            time.sleep(0.05)
            record("tick")
        record("end")
        return current_job().attempt

    @app.task(name="tracked")
    def tracked(first_s: float) -> int:
        return tracked_run(first_s)

    @app.task(name="tracked_child", timeout=300)
    def tracked_child(first_s: float) -> int:
        return tracked_run(first_s)

    @app.task(name="exits", max_attempts=3)
    def exits(code: int) -> None:
        sys.exit(code)

    @app.task(name="exits_child", max_attempts=3, timeout=60)
    def exits_child(code: int) -> None:
        sys.exit(code)

    @app.task(name="steady", max_attempts=100)
    def steady(seconds: float) -> None:
        record("start")
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            time.sleep(0.05)
            record("tick")
        record("end")

    @app.task(name="steady_child", max_attempts=100, timeout=300)
    def steady_child(seconds: float) -> None:
        steady(seconds)

    @app.task(name="whoami")
    def whoami(n: int) -> int:
        record("start")
        time.sleep(0.01)
        return os.getpid()

    @app.task(name="hog")
    def hog(mb: int) -> int:
        record("start")
        KEPT.append(b"x" * (mb * 2**20))  # written, so resident
        return os.getpid()
    """
)

#: How far past --grace a stopping worker may take to exit on a loaded machine; it
#: takes about 0.2 s on a quiet one.
EXIT_MARGIN_S = 6.0


class Runs:
    """The records in runs.log: per (job, pid), when its run started and last showed life."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def lines(self) -> list[tuple[str, int, int, str, float]]:
        if not self.path.exists():
            return []
        rows = []
        for line in self.path.read_text().splitlines():
            job_id, attempt, pid, event, at = line.split()
            rows.append((job_id, int(attempt), int(pid), event, float(at)))
        return rows

    def intervals(self, job_id: str) -> dict[int, tuple[float, float]]:
        spans: dict[int, tuple[float, float]] = {}
        for jid, _, pid, _, at in self.lines():
            if jid == job_id:
                first, last = spans.get(pid, (at, at))
                spans[pid] = (min(first, at), max(last, at))
        return spans

    def pids(self, job_id: str) -> set[int]:
        return {pid for jid, _, pid, event, _ in self.lines() if jid == job_id and event == "start"}

    def assert_never_overlapped(self, job_id: str) -> None:
        spans = sorted(self.intervals(job_id).values())
        for (_, end), (start, _) in itertools.pairwise(spans):
            assert end < start, f"two runs of {job_id} overlapped: {spans}"


class Shell(Env):
    """`Env` with this module's app, and workers whose stderr is kept in a file."""

    def __init__(self, tmp_path: Path, url: str | None = None) -> None:
        super().__init__(tmp_path)
        if url is not None:  # another broker than the SQLite file
            self.app.close()
            self.url, self.env["OFFLOAD_URL"], self.app = url, url, Offload(url)
        (tmp_path / "jobsapp.py").write_text(APP_SOURCE)
        self.runs = Runs(self.out / "runs.log")
        self.logs: list[Path] = []

    def start(self, *args: str, own_group: bool = False) -> subprocess.Popen[bytes]:
        log = self.dir / f"worker{len(self.logs)}.log"
        self.logs.append(log)
        with open(log, "wb") as stderr:
            proc = subprocess.Popen(
                [sys.executable, "-m", "offload", "worker", "jobsapp:app", "--poll", "0.05", *args],
                env=self.env,
                cwd=self.dir,
                stderr=stderr,
                process_group=0 if own_group else None,
            )
        self.procs.append(proc)
        return proc

    def log(self, proc: subprocess.Popen[bytes]) -> str:
        return self.logs[self.procs.index(proc)].read_text()

    def state(self, job_id: str) -> JobState:
        return self.info(job_id).state

    def succeeded(self, supervisor: subprocess.Popen[bytes]) -> int:
        """How many jobs succeeded; fails at once if the supervisor died."""
        assert supervisor.poll() is None, self.log(supervisor)[-2000:]
        counts = self.app.portal.run(self.app.broker.counts())
        return counts["default"].states[JobState.SUCCEEDED] if "default" in counts else 0


@pytest.fixture
def shell(tmp_path: Path) -> Iterator[Shell]:
    s = Shell(tmp_path)
    yield s
    s.close()


def exit_time(proc: subprocess.Popen[bytes], since: float) -> float:
    """Seconds from `since` until `proc` exited; fails if it is still running after
    --grace plus the margin."""
    try:
        proc.wait(timeout=EXIT_MARGIN_S + 5)
    except subprocess.TimeoutExpired:
        raise AssertionError("the worker did not exit after its grace period") from None
    return time.monotonic() - since


@pytest.mark.parametrize("task", ["tracked", "tracked_child"])
def test_sync_job_past_the_grace_period_never_runs_twice_at_once(shell: Shell, task: str) -> None:
    job = shell.app.enqueue(task, 60.0)
    first = shell.start("--grace", "1", "--lease", "2")
    wait_for(lambda: len(shell.runs.pids(job.id)) == 1, timeout=30)
    rival = shell.start("--lease", "2")
    sent = time.monotonic()
    first.send_signal(signal.SIGTERM)
    took = exit_time(first, sent)
    assert took < 1 + EXIT_MARGIN_S
    wait_for(lambda: shell.state(job.id) is JobState.SUCCEEDED, timeout=30)
    assert shell.info(job.id).attempt == 2
    assert len(shell.runs.pids(job.id)) == 2
    shell.runs.assert_never_overlapped(job.id)
    log = shell.log(first)
    assert "Traceback" not in log
    if task == "tracked":  # a thread cannot be stopped: the job is left to its lease
        assert "cannot be stopped" in log
    else:  # its child process was killed: the job is given back at once
        assert "did not finish within the grace period" in log
    assert rival.poll() is None


def test_second_signal_ends_at_once_and_a_third_prints_no_traceback(shell: Shell) -> None:
    job = shell.app.enqueue("tracked", 60.0)
    first = shell.start("--grace", "60", "--lease", "2")
    wait_for(lambda: len(shell.runs.pids(job.id)) == 1, timeout=30)
    shell.start("--lease", "2")
    first.send_signal(signal.SIGINT)
    wait_for(lambda: "SIGINT: stopping" in shell.log(first))
    sent = time.monotonic()
    first.send_signal(signal.SIGINT)
    time.sleep(1.0)
    if first.poll() is None:
        first.send_signal(signal.SIGINT)
    assert exit_time(first, sent) < EXIT_MARGIN_S
    wait_for(lambda: shell.state(job.id) is JobState.SUCCEEDED, timeout=30)
    shell.runs.assert_never_overlapped(job.id)
    assert "Traceback" not in shell.log(first)


def test_ctrl_c_to_a_supervised_group_is_one_graceful_stop(shell: Shell) -> None:
    """A terminal's Ctrl-C reaches every process of the foreground group; the workers
    must count it once (from their supervisor), not as a second, forcing signal."""
    job = shell.app.enqueue("tracked", 2.0)
    supervisor = shell.start("--processes", "2", "--grace", "30", own_group=True)
    wait_for(lambda: len(shell.runs.pids(job.id)) == 1, timeout=30)
    os.killpg(supervisor.pid, signal.SIGINT)
    assert supervisor.wait(timeout=30) == 0
    info = shell.info(job.id)
    assert (info.state, info.attempt) == (JobState.SUCCEEDED, 1)
    assert "stopping now" not in shell.log(supervisor)


@pytest.mark.parametrize("task", ["exits", "exits_child"])
def test_sys_exit_in_a_handler_fails_its_job_only(shell: Shell, task: str) -> None:
    innocent = shell.app.enqueue("tracked", 2.0)
    worker = shell.start("--concurrency", "4", "--lease", "30")
    wait_for(lambda: len(shell.runs.pids(innocent.id)) == 1, timeout=30)
    culprit = shell.app.enqueue(task, 7)
    wait_for(lambda: shell.state(culprit.id) is JobState.DEAD, timeout=30)
    wait_for(lambda: shell.state(innocent.id) is JobState.SUCCEEDED, timeout=30)
    assert shell.info(innocent.id).attempt == 1
    info = shell.info(culprit.id)
    assert info.attempt == 1  # SystemExit is not an Exception: not retried by default
    assert info.error is not None and info.error.type == "SystemExit"
    assert "7" in info.error.message
    after = shell.app.enqueue("whoami", 1)
    wait_for(lambda: shell.state(after.id) is JobState.SUCCEEDED, timeout=30)
    assert worker.poll() is None


def supervisor_lines(log: str, word: str) -> list[str]:
    return [line for line in log.splitlines() if word in line]


def test_max_jobs_recycles_workers_without_losing_or_charging_a_job(shell: Shell) -> None:
    jobs = shell.app.options("whoami").enqueue_many([(i,) for i in range(40)])
    supervisor = shell.start("--processes", "2", "--max-jobs", "5", "-c", "2")
    wait_for(lambda: shell.succeeded(supervisor) == 40, timeout=120)
    infos = [shell.info(j.id) for j in jobs]
    assert [i.attempt for i in infos] == [1] * 40
    starts = [(jid, pid) for jid, _, pid, event, _ in shell.runs.lines() if event == "start"]
    assert sorted(jid for jid, _ in starts) == sorted(j.id for j in jobs)  # each ran once
    per_pid: dict[int, int] = {}
    for _, pid in starts:
        per_pid[pid] = per_pid.get(pid, 0) + 1
    assert max(per_pid.values()) <= 5
    assert len(per_pid) >= 8
    supervisor.send_signal(signal.SIGTERM)
    assert supervisor.wait(timeout=30) == 0
    log = shell.log(supervisor)
    assert len(supervisor_lines(log, "recycled")) >= 6
    assert not supervisor_lines(log, "restarting")


def test_max_memory_recycles_a_worker_that_keeps_memory(shell: Shell) -> None:
    jobs = shell.app.options("hog").enqueue_many([(40,) for _ in range(6)])
    supervisor = shell.start("--max-memory", "150", "-c", "1")  # one process, supervised
    wait_for(lambda: shell.succeeded(supervisor) == 6, timeout=120)
    assert [shell.info(j.id).attempt for j in jobs] == [1] * 6
    pids = {pid for _, _, pid, event, _ in shell.runs.lines() if event == "start"}
    assert len(pids) >= 2  # each process keeps at most 2-3 of the 40 MB blocks
    supervisor.send_signal(signal.SIGTERM)
    assert supervisor.wait(timeout=30) == 0
    log = shell.log(supervisor)
    assert supervisor_lines(log, "--max-memory")
    assert not supervisor_lines(log, "restarting")
