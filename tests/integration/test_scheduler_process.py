"""`offload scheduler` in real time: three replicas on one SQLite file, one-second ticks,
no tick enqueued twice and none missed; `offload schedules`; `worker --scheduler`."""

from __future__ import annotations

import itertools
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

from offload import JobState, Offload
from offload.brokers.base import JobInfo

APP = textwrap.dedent(
    """
    from offload import Cron, Every, Offload

    app = Offload()

    @app.task(name="tick")
    def tick() -> None:
        pass

    app.schedule(tick, Every(1), overlap="allow")
    app.schedule(tick, Cron("30 2 * * *", tz="Europe/Paris"), id="nightly")
    """
)


def _env(tmp_path: Path) -> dict[str, str]:
    (tmp_path / "schedapp.py").write_text(APP)
    return {
        **os.environ,
        "OFFLOAD_URL": f"sqlite:///{tmp_path / 'broker.db'}",
        "OFFLOAD_LOG_FORMAT": "json",
        "PYTHONPATH": str(tmp_path),
    }


def _fires(tmp_path: Path, schedule_id: str) -> list[tuple[int, JobState]]:
    app = Offload(f"sqlite:///{tmp_path / 'broker.db'}")
    try:
        jobs = app.portal.run(app.broker.list_jobs(limit=1000)).items
    finally:
        app.close()
    out = []
    for job in jobs:
        assert job.key is not None
        _, sid, ts = job.key.split(":")
        if sid == schedule_id:
            out.append((int(ts), job.state))
    return sorted(out)


def test_three_scheduler_processes_fire_each_second_once(tmp_path: Path) -> None:
    env = _env(tmp_path)
    started = int(time.time())
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "offload", "scheduler", "schedapp:app"],
            cwd=tmp_path,
            env=env,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(3)
    ]
    # Until four fires exist (at most a minute: on a loaded machine the processes can
    # take seconds to start), then a second more, so that every process has ticked
    # alongside the others.
    deadline = time.monotonic() + 60
    while len(_fires(tmp_path, "tick")) < 4 and time.monotonic() < deadline:
        time.sleep(0.5)
    time.sleep(1.0)
    for proc in procs:
        proc.send_signal(signal.SIGTERM)
    logs = [proc.communicate(timeout=15)[1] for proc in procs]
    assert [proc.returncode for proc in procs] == [0, 0, 0], logs

    fires = [ts for ts, _ in _fires(tmp_path, "tick")]
    # every second between the first and the last recorded fire, each exactly once
    assert len(fires) >= 4, fires
    assert fires[0] >= started - 1, fires  # no catch-up of the grace window before the start
    assert fires == list(range(fires[0], fires[-1] + 1))
    enqueued = [
        record
        for log in logs
        for line in log.splitlines()
        if line.startswith("{")
        for record in [json.loads(line)]
        if record.get("action") == "enqueued" and record.get("schedule") == "tick"
    ]
    # each fire was created by one process; the others found it already there
    assert len(enqueued) == len(fires)
    assert len({r["job_id"] for r in enqueued}) == len(fires)


def test_schedules_lists_next_fire_times(tmp_path: Path) -> None:
    env = _env(tmp_path)
    run = subprocess.run(
        [sys.executable, "-m", "offload", "schedules", "schedapp:app", "--json", "-n", "2"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert run.returncode == 0, run.stderr
    rows = {row["id"]: row for row in map(json.loads, run.stdout.splitlines())}
    assert rows["nightly"]["schedule"] == "30 2 * * *"
    assert rows["nightly"]["tz"] == "Europe/Paris"
    assert all(t.endswith(("02:30:00+01:00", "02:30:00+02:00", "03:00:00+02:00"))
               for t in rows["nightly"]["next_local"])  # fmt: skip
    assert rows["tick"]["schedule"] == "every 1s" and len(rows["tick"]["next"]) == 2
    assert rows["tick"]["overlap"] == "allow" and rows["nightly"]["misfire"] == "run_once"
    table = subprocess.run(
        [sys.executable, "-m", "offload", "schedules", "schedapp:app"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert "nightly" in table.stdout and "Europe/Paris" in table.stdout
    help_text = subprocess.run(
        [sys.executable, "-m", "offload", "worker", "--help"],
        capture_output=True,
        text=True,
        timeout=60,
    ).stdout
    assert "OFFLOAD_SCHEDULER" in help_text


def test_worker_with_scheduler_flag_enqueues_and_runs_fires(tmp_path: Path) -> None:
    env = {**_env(tmp_path), "OFFLOAD_SCHEDULER": "1"}
    worker = subprocess.Popen(
        [sys.executable, "-m", "offload", "worker", "schedapp:app", "--poll", "0.1"],
        cwd=tmp_path,
        env=env,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        done = [ts for ts, state in _fires(tmp_path, "tick") if state is JobState.SUCCEEDED]
        if len(done) >= 2:
            break
        time.sleep(0.2)
    worker.send_signal(signal.SIGTERM)
    _, log = worker.communicate(timeout=30)
    assert worker.returncode == 0, log
    assert len(done) >= 2, log


SLOW_APP = textwrap.dedent(
    """
    import time

    from offload import Every, Offload

    app = Offload()

    @app.task(name="slow")
    def slow() -> None:
        time.sleep(4)

    app.schedule(slow, Every(1))  # overlap="skip"
    """
)


def _slow_fires(db: Path) -> list[JobInfo]:
    app = Offload(f"sqlite:///{db}")
    try:
        jobs = app.portal.run(app.broker.list_jobs(limit=1000)).items
    finally:
        app.close()
    return sorted((j for j in jobs if j.task == "slow"), key=lambda j: str(j.key))


def _wait_running(db: Path, seen: set[str]) -> None:
    """Until a fire not in `seen` runs (then it is added)."""
    deadline = time.monotonic() + 60
    while True:
        running = {str(j.key) for j in _slow_fires(db) if j.state is JobState.RUNNING}
        if running - seen:
            seen.update(running)
            return
        assert time.monotonic() < deadline, "no new fire ran within 60 s"
        time.sleep(0.1)


def test_overlap_skip_holds_across_scheduler_restarts(tmp_path: Path) -> None:
    """Three `offload scheduler` processes and a worker that could run four jobs at once;
    schedulers restarted (no memory) while a four-second fire runs. Each fire must
    wait for the last one to end: their runs never overlap."""
    (tmp_path / "slowapp.py").write_text(SLOW_APP)
    db = tmp_path / "broker.db"
    env = {**os.environ, "OFFLOAD_URL": f"sqlite:///{db}", "PYTHONPATH": str(tmp_path)}

    def start(*args: str) -> subprocess.Popen[str]:
        command = [sys.executable, "-m", "offload", *args, "slowapp:app"]
        return subprocess.Popen(command, cwd=tmp_path, env=env, stderr=subprocess.PIPE, text=True)

    def start_scheduler() -> subprocess.Popen[str]:
        """A scheduler process, once it runs (and so handles SIGTERM)."""
        proc = start("scheduler")
        assert proc.stderr is not None
        while "scheduler started" not in proc.stderr.readline():
            assert proc.poll() is None, "the scheduler exited"
        return proc

    def stop(proc: subprocess.Popen[str]) -> str:
        proc.send_signal(signal.SIGTERM)
        log = proc.communicate(timeout=60)[1]
        assert proc.returncode == 0, log
        return log

    worker = start("worker", "--concurrency", "4", "--poll", "0.1")
    schedulers = [start_scheduler() for _ in range(3)]
    seen: set[str] = set()
    try:
        for i in range(3):  # restart each scheduler while a (new) fire's job runs
            _wait_running(db, seen)
            stop(schedulers[i])
            schedulers[i] = start_scheduler()
            time.sleep(1.0)  # it ticks while the job still runs
    finally:
        logs = [stop(s) for s in schedulers]
    try:
        deadline = time.monotonic() + 60
        while any(j.state is not JobState.SUCCEEDED for j in _slow_fires(db)):
            assert time.monotonic() < deadline, "the last fires did not finish"
            time.sleep(0.2)
    finally:
        logs.append(stop(worker))

    runs = sorted((j.started_at or 0.0, j.finished_at or 0.0, j.key) for j in _slow_fires(db))
    assert len(runs) >= 3, logs
    for (_, ended, key), (started, _, next_key) in itertools.pairwise(runs):
        assert started >= ended, f"{next_key} started before {key} ended: {runs}"
